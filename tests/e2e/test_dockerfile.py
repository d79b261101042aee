"""The Dockerfile, without a Docker engine: hadolint is clean, the image's key properties hold, and the build
context (the files .dockerignore lets through) builds the package from pyproject.toml as `pip install .` does."""

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    return [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for line in joined.splitlines()
        if (parts := line.split(None, 1))
    ]


def test_hadolint_finds_nothing():
    assert HADOLINT.is_file(), "hadolint comes with the dev extra: pip install -e '.[dev]'"
    proc = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_cuda_capable_base_is_a_build_argument():
    steps = _instructions()
    (arg_index,) = [i for i, (op, args) in enumerate(steps) if op == "ARG" and args.startswith("BASE_IMAGE=")]
    (from_index,) = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert arg_index < from_index and steps[from_index][1] == "${BASE_IMAGE}"
    assert re.search(r"--build-arg BASE_IMAGE=nvidia/cuda:\S+", DOCKERFILE.read_text())  # documented, with a tag


def test_installs_from_pyproject_and_runs_nas_as_a_non_root_user():
    steps = _instructions()
    runs = [args for op, args in steps if op == "RUN"]
    assert any(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", run) for run in runs)
    assert ("COPY", "--chown=nas:nas . .") in steps
    users = [args for op, args in steps if op == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so a runtime can verify it is not root
    assert any(f"--uid {uid}" in run for run in runs)
    assert steps[-2:] == [("ENTRYPOINT", '["nas"]'), ("CMD", '["search"]')]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or a folder above it wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(prefix, p) for prefix in prefixes for p in candidates):
            ignored = not negate
    return ignored


def test_build_context_builds_the_package(tmp_path):
    """Copy what `COPY . .` would (tracked files minus .dockerignore), then build the wheel `pip install .` builds."""
    patterns = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    context = tmp_path / "context"
    for name in listed:
        if (REPO_ROOT / name).is_file() and not _ignored(name, patterns):
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, context / name)
    assert (context / "pyproject.toml").is_file() and not (context / "data").exists()
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run([*pip_wheel, "-w", str(tmp_path / "whl"), str(context)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "whl").glob("nas_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"flows/cli.py", "nas_core/search/loop.py", "nas_core/search/gate.py", "nas_pipeline/pipeline.py"} <= names
    assert re.search(r"^nas = flows\.cli:run$", entry_points, re.MULTILINE)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("data/digits/x.npy", True), ("data.dvc", False), ("nas_core/__pycache__/a.pyc", True), ("__pycache__/b.pyc", True),
     (".dvc/cache/ab/cd", True), (".dvc/config", False), ("mlflow.db", True), ("flows/cli.py", False)],
)  # fmt: skip
def test_dockerignore_matching_follows_docker(path, expected):
    patterns = ["data", "**/__pycache__", ".dvc/cache", "mlflow.db", "!nothing"]
    assert _ignored(path, patterns) is expected
