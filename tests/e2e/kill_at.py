"""Run ``nas`` and SIGKILL it at a chosen point, to test what survives a kill there (tests only, never in production).

``python -m tests.e2e.kill_at MODULE:ATTRIBUTE entry|after N -- NAS-ARGS``: the N-th call of the function (or method,
``Class.method``) is killed at its entry or right after it returns. The whole process group dies, like ``kill -9`` of
the search and its helpers; start it in a new session.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from typing import Any


def kill_at(target: str, when: str, nth: int) -> None:
    """Replace ``target`` by a wrapper that kills the process group at its ``nth`` call (``when``: entry or after)."""
    module_name, path = target.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if when == "entry" and calls == nth:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        result = original(*args, **kwargs)
        if when == "after" and calls == nth:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    target, when, nth, separator, *argv = sys.argv[1:]
    assert when in ("entry", "after") and separator == "--", "usage: kill_at MODULE:ATTRIBUTE entry|after N -- NAS-ARGS"
    kill_at(target, when, int(nth))
    from flows.cli import main

    sys.exit(main(argv))
