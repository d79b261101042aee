import shutil
import subprocess

import pytest

from nas_core.data import prepare_dataset
from nas_core.versioning import VersioningError, ensure_repo, push_data, run_dvc, track_data, tracked_version
from tests.conftest import REPO_ROOT, git_status


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_preparing_digits_in_a_fresh_clone_reproduces_the_committed_hash(project):
    ensure_repo(project)
    prepare_dataset("digits", project / "data")
    version = track_data(project)
    assert version == tracked_version(REPO_ROOT)
    assert version.endswith(".dir")
    # a second preparation is byte-identical, so data.dvc does not change
    before = (project / "data.dvc").read_text()
    prepare_dataset("digits", project / "data")
    assert track_data(project) == version
    assert (project / "data.dvc").read_text() == before


def test_tracking_leaves_a_committed_clone_clean(project):
    ensure_repo(project)
    prepare_dataset("digits", project / "data")
    track_data(project)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=project, check=True)
    prepare_dataset("digits", project / "data")
    track_data(project)
    assert git_status(project) == ""


def test_push_then_pull_restores_the_data_from_the_default_local_remote(project):
    ensure_repo(project)
    assert "local" in run_dvc(project, "remote", "list")
    prepare_dataset("digits", project / "data")
    track_data(project)
    original = _files(project / "data")
    push_data(project)
    assert any((project / ".dvc-remote").rglob("*")), "the default remote should hold the pushed files"
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    run_dvc(project, "pull", "--quiet")
    assert _files(project / "data") == original


def test_ensure_repo_works_outside_git(tmp_path):
    ensure_repo(tmp_path)
    assert (tmp_path / ".dvc" / "config").is_file()
    ensure_repo(tmp_path)  # idempotent
    assert run_dvc(tmp_path, "remote", "list").count("local") == 1


def test_broken_dvc_file_is_a_clear_error(tmp_path):
    (tmp_path / "data.dvc").write_text("outs: []\n")
    with pytest.raises(VersioningError, match="cannot read the data version"):
        tracked_version(tmp_path)


def test_failed_dvc_command_names_the_command(tmp_path):
    with pytest.raises(VersioningError, match="dvc add"):
        run_dvc(tmp_path, "add", "missing-folder")
