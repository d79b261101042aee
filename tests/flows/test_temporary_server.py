"""The temporary Prefect server of a search gets its port from the operating system, not Prefect's random pick."""

from __future__ import annotations

import socket

import pytest
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.temporary_server import claim_temporary_server, free_local_port


@pytest.fixture
def no_temporary_server():
    """Prefect's registry of servers in this process (the test session's shared one) set aside, then put back."""
    prior = dict(SubprocessASGIServer._instances)
    SubprocessASGIServer._instances.clear()
    yield
    SubprocessASGIServer._instances.clear()
    SubprocessASGIServer._instances.update(prior)


def test_free_local_port_can_be_bound():
    port = free_local_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # raises when the port is taken


def test_the_claimed_server_is_the_one_prefect_starts_and_its_port_is_not_in_prefects_random_range(no_temporary_server):
    with temporary_settings({PREFECT_API_URL: None}):
        port = claim_temporary_server()
    assert port is not None
    server = SubprocessASGIServer()  # what Prefect's client asks for when it needs the temporary server
    assert server.port == port and not server.running
    assert port not in SubprocessASGIServer._port_range  # the OS hands out ephemeral ports (32768 and up on Linux)


def test_nothing_is_claimed_when_a_server_url_is_set_or_one_is_registered(no_temporary_server):
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert claim_temporary_server() is None
    assert None not in SubprocessASGIServer._instances
    existing = SubprocessASGIServer(port=free_local_port())
    SubprocessASGIServer._instances[None] = existing
    with temporary_settings({PREFECT_API_URL: None}):
        assert claim_temporary_server() is None
    assert SubprocessASGIServer() is existing


@pytest.mark.slow  # a fresh interpreter
def test_with_a_server_url_prefects_own_server_is_not_even_imported(tmp_path):
    """Importing Prefect's server takes seconds; a search against ``nas up`` or a team server never needs it."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    probe = (
        "import json, sys\nfrom flows.temporary_server import claim_temporary_server\n"
        "print(json.dumps([claim_temporary_server(), 'prefect.server.api.server' in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [None, False]
    env.pop("PREFECT_API_URL")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True)
    port, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert port is not None and imported, "without a URL the temporary server is claimed (the check above can fail)"
