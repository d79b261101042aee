"""Proposals never depend on the process's hash seed (a resumed search runs in a new process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nas_core.strategies import list_strategies
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_sequences_do_not_depend_on_the_process_hash_seed():
    """A resumed search runs in a new process: no strategy's proposals may depend on set/str-hash order."""
    script = (
        "import json\n"
        "from nas_core.strategies import list_strategies\n"
        "from tests.nas_core.strategies.test_contract import make, run_search\n"
        "print(json.dumps({n: run_search(make(n, seed=21), generations=4, fail_every=5) for n in list_strategies()}))\n"
    )
    runs = [  # one process per hash seed for all strategies, both at once: importing torch takes seconds
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONHASHSEED": hash_seed})
        for hash_seed in ("1", "2")
    ]  # fmt: skip
    outputs = []
    for run in runs:
        stdout, _ = run.communicate(timeout=300)
        assert run.returncode == 0
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0]) == sorted(list_strategies())
    assert all(len(log) == 4 for log in outputs[0].values())
