"""Everything under tests/e2e/ starts real processes (the `nas` command, servers, Chromium, a Docker build, kill -9):
marked ``slow``, so ``pytest -m "not slow"`` leaves it out and ``.ci/run`` (plain ``pytest``) runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
