"""Prefect's temporary server for a search run without ``PREFECT_API_URL``, on a port no other search can take.

Prefect picks the temporary server's port at random in 8000-8999 and checks it is free before its server binds it.
Two searches started together can pick the same port: the second one's health check is then answered by the first
one's server, its own server fails to bind, and the search fails with "connection refused" when the first search
ends and stops its server. Here the operating system hands out the port (bind to port 0), the way Prefect's own
test harness does it, and the server is registered as the one Prefect's temporary-server mode uses in this process.
"""

from __future__ import annotations

import socket


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that the operating system reports free (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_temporary_server() -> int | None:
    """Register this process's temporary Prefect server on a port from the OS; its port, or None when
    Prefect's API URL is set (environment or profile) or a temporary server is already set up here (it is then kept)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # before importing Prefect's server (seconds), which a search with a server never needs
        return None
    from prefect.server.api.server import SubprocessASGIServer

    if None in SubprocessASGIServer._instances:  # noqa: SLF001 - Prefect's registry of the temporary server
        return None
    server = SubprocessASGIServer(port=free_local_port())
    SubprocessASGIServer._instances[None] = server  # noqa: SLF001 - what Prefect's test harness does
    return server.port
