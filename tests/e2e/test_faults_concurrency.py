"""Two searches at once on one project, first a fresh one (no .dvc/ nor mlflow.db yet: both would create them), then
the same project again: all exit 0, all register, and the champion alias tells one consistent story."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from nas_pipeline.model_registry import CHAMPION_ALIAS
from tests.conftest import make_project
from tests.e2e.faults import nas_env, start_search

MODEL = "nas-digits"


def _two_at_once(tmp_path: Path, project: Path, env: dict[str, str], round_: int) -> None:
    procs = []
    for seed in (1, 2):
        args = ["--budget", "2", "--epochs", "1", "--population", "2", "--workers", "1", "--seed", str(seed + 10 * round_),
                "--output", str(project / f"out-{round_}-{seed}"), "--project-dir", str(project), "--quiet"]  # fmt: skip
        procs.append((start_search(args, project, env, tmp_path / f"search-{round_}-{seed}.log"), seed))
    for proc, seed in procs:
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log = (tmp_path / f"search-{round_}-{seed}.log").read_text()
        assert proc.returncode == 0, log[-3000:]


def check_champion_story(client: MlflowClient, versions_expected: int) -> None:
    """Replaying the versions in registration order with the promotion rule gives the tags and the alias seen."""
    versions = sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    assert len(versions) == versions_expected
    champion = None
    for version in versions:
        tags, accuracy = version.tags, float(version.tags["nas.val_accuracy"])
        promoted = champion is None or accuracy > champion[1]
        assert tags["nas.promoted"] == str(promoted).lower(), (version.version, tags)
        assert tags.get("nas.previous_champion") == (champion[0] if champion else None), (version.version, tags)
        if promoted:
            champion = (str(version.version), accuracy)
    assert champion is not None
    assert str(client.get_registered_model(MODEL).aliases[CHAMPION_ALIAS]) == champion[0]


def test_two_searches_at_once_on_a_fresh_then_an_existing_project(tmp_path):
    project = make_project(tmp_path / "project")
    env = nas_env(tmp_path)
    assert not (project / "mlflow.db").exists() and not (project / ".dvc").exists()  # fresh: DVC and MLflow set up by both
    _two_at_once(tmp_path, project, env, 1)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    check_champion_story(client, 2)
    _two_at_once(tmp_path, project, env, 2)
    check_champion_story(client, 4)
