"""The ``nas`` process ends without tearing the interpreter down, but only after what Python's exit would do first:
non-daemon threads finish (Prefect's log and event workers hook in there), ``atexit`` handlers run, output is
flushed, and the exit code is the command's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # fresh interpreters

PROBE = """
import atexit, sys, threading, time
from flows import cli

out = sys.argv[1]
def late_thread():
    time.sleep(0.3)
    open(out + ".thread", "w").write("finished")
threading.Thread(target=late_thread).start()  # not a daemon: the exit waits for it
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
print("printed, not flushed", end="")
sys.argv = ["nas", *sys.argv[2:]]
cli.run()
print("never reached")
"""


def _env(tmp_path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(tmp_path / ".prefect")}


def _probe(tmp_path, *args: str) -> subprocess.CompletedProcess:
    marker = str(tmp_path / "marker")
    return subprocess.run(
        [sys.executable, "-c", PROBE, marker, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["search", "--strategy", "nope"], 2)])
def test_the_command_exits_with_its_code_after_threads_and_exit_handlers(tmp_path, args, code):
    done = _probe(tmp_path, *args)
    assert done.returncode == code, done.stderr
    assert (tmp_path / "marker.thread").read_text() == "finished"
    assert (tmp_path / "marker.atexit").read_text() == "ran"
    assert done.stdout.startswith("printed, not flushed") and "never reached" not in done.stdout
    if code:  # one line, as always
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: strategy: unknown strategy 'nope'")


def test_ctrl_c_while_the_exit_waits_for_a_thread_is_one_line_and_code_130(tmp_path):
    probe = (
        "import sys, threading, time\nfrom flows import cli\n"
        "threading.Thread(target=time.sleep, args=(120,)).start()\n"  # not a daemon: the exit would wait 2 minutes
        "open(sys.argv[1], 'w').write('started')\nsys.argv = ['nas', '--help']\ncli.run()\n"
    )
    started = tmp_path / "started"
    process = subprocess.Popen(
        [sys.executable, "-c", probe, str(started)],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    while process.poll() is None and time.monotonic() < deadline:  # Ctrl-C until it ends (the first may land in main)
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
    process.kill()  # nothing left to kill when it ended in time
    stderr = process.communicate()[1]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
