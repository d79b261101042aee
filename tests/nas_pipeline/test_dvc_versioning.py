import os
import shutil
import subprocess

import pytest

from nas_core.data.preparation import prepare_dataset
from nas_pipeline import dvc_versioning
from nas_pipeline.dvc_versioning import (
    DataIntegrityError,
    DvcDataStore,
    VersioningError,
    check_data,
    dvc_error,
    ensure_repo,
    push_data,
    run_dvc,
    track_data,
    tracked_version,
)
from tests.conftest import REPO_ROOT, git_status


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
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


@pytest.mark.slow
def test_tracking_leaves_a_committed_clone_clean(project):
    ensure_repo(project)
    prepare_dataset("digits", project / "data")
    track_data(project)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=project, check=True)
    prepare_dataset("digits", project / "data")
    track_data(project)
    assert git_status(project) == ""


@pytest.mark.slow
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


@pytest.mark.slow  # real DVC processes
def test_a_failed_push_is_a_versioning_error_naming_the_push(project):
    ensure_repo(project)
    prepare_dataset("digits", project / "data")
    track_data(project)
    (project / "not-a-folder").write_text("")
    run_dvc(project, "remote", "add", "--force", "--default", "local", str(project / "not-a-folder"))
    with pytest.raises(VersioningError, match=r"`dvc push data.dvc` failed in .*: NotADirectoryError"):
        push_data(project)


def test_ensure_repo_works_outside_git(tmp_path):
    ensure_repo(tmp_path)
    assert (tmp_path / ".dvc" / "config").is_file()
    ensure_repo(tmp_path)  # idempotent
    assert run_dvc(tmp_path, "remote", "list").count("local") == 1


def test_a_default_remote_in_the_projects_config_is_read_without_asking_dvc(tmp_path):
    (tmp_path / ".dvc").mkdir()
    assert not dvc_versioning._names_a_default_remote(tmp_path)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    autostage = true\n")
    assert not dvc_versioning._names_a_default_remote(tmp_path), "a config without core.remote"
    (tmp_path / ".dvc" / "config.local").write_text("[core]\n    remote = mine\n['remote \"mine\"']\n    url = /x\n")
    assert dvc_versioning._names_a_default_remote(tmp_path)


def _count_dvc_calls(monkeypatch):
    """The arguments of every ``dvc`` command run from here on (each still runs)."""
    calls = []
    real = dvc_versioning.run_dvc

    def counted(root, *args):
        calls.append(args)
        return real(root, *args)

    monkeypatch.setattr(dvc_versioning, "run_dvc", counted)
    return calls


@pytest.mark.slow  # real DVC processes
def test_preparing_unchanged_data_again_needs_no_dvc_add(project, monkeypatch):
    calls = _count_dvc_calls(monkeypatch)
    first = DvcDataStore(project).prepare("digits")
    assert "add" in [args[0] for args in calls]
    calls.clear()
    pushed = []
    monkeypatch.setattr(dvc_versioning, "push_data", lambda root: pushed.append(root) or push_data(root))
    again = DvcDataStore(project).prepare("digits")
    assert again.version == first.version == tracked_version(project)
    # the remote is read from the config; what `dvc add` hashed is known unchanged: no status check, nothing added,
    # and the push runs in this process: no `dvc` process at all
    assert calls == [] and pushed == [project.resolve()]
    (project / "data" / "digits" / "meta.json").write_text("{}\n")  # a changed file is caught, never tracked quietly
    with pytest.raises(DataIntegrityError):
        DvcDataStore(project).prepare("digits")


def test_broken_dvc_file_is_a_clear_error(tmp_path):
    (tmp_path / "data.dvc").write_text("outs: []\n")
    with pytest.raises(VersioningError, match="cannot read the data version"):
        tracked_version(tmp_path)


def test_failed_dvc_command_names_the_command_and_dvc_s_reason(tmp_path):
    with pytest.raises(VersioningError, match="`dvc add missing-folder` failed in .*: you are not inside of a DVC repository"):
        run_dvc(tmp_path, "add", "missing-folder")


def test_tracking_data_that_is_not_there_says_dvc_s_reason_not_its_exit_code(tmp_path):
    ensure_repo(tmp_path)
    with pytest.raises(VersioningError, match="does not exist") as error:
        track_data(tmp_path)
    assert "Having any troubles" not in str(error.value)


def test_dvc_s_error_line_is_picked_over_its_support_footer():
    output = "ERROR: unexpected error - [Errno 20] Not a directory: '/r/x'\n\nHaving any troubles? Hit us up\n"
    assert dvc_error(output, 255) == "unexpected error - [Errno 20] Not a directory: '/r/x'"
    assert dvc_error("\nHaving any troubles? Hit us up\n", 255) == "exit code 255, no error message"


@pytest.fixture
def tracked(project):
    """A project with digits prepared and tracked by DVC (cache filled, nothing pushed)."""
    ensure_repo(project)
    prepare_dataset("digits", project / "data")
    track_data(project)
    return project


def _flip_bytes(path, at=200):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_freshly_tracked_data_passes_the_integrity_check(tracked):
    check_data(tracked)


def test_a_corrupted_file_is_named_with_how_to_restore_it(tracked):
    original = _files(tracked / "data")
    _flip_bytes(tracked / "data" / "digits" / "train_x.npy")
    with pytest.raises(DataIntegrityError) as info:
        check_data(tracked)
    message = str(info.value)
    assert "\n" not in message
    assert "modified: data/digits/train_x.npy" in message
    assert "dvc checkout" in message and "dvc pull" in message
    assert "val_x.npy" not in message  # only what changed
    # restoring as the message says brings the exact bytes back and the check passes again
    run_dvc(tracked, "checkout", "--force", "--quiet", "data.dvc")
    assert _files(tracked / "data") == original
    check_data(tracked)


@pytest.mark.slow
def test_added_and_deleted_files_are_reported(tracked):
    (tracked / "data" / "digits" / "extra.npy").write_bytes(b"not part of the dataset")
    (tracked / "data" / "digits" / "test_y.npy").unlink()
    with pytest.raises(DataIntegrityError, match=r"added: data/digits/extra\.npy") as info:
        check_data(tracked)
    assert "deleted: data/digits/test_y.npy" in str(info.value)
    run_dvc(tracked, "checkout", "--force", "--quiet", "data.dvc")
    assert not (tracked / "data" / "digits" / "extra.npy").exists()
    check_data(tracked)


def _forget_cache(root):
    """Like a clone that prepared data/ itself and never pulled: no DVC cache and no DVC index."""
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)


@pytest.mark.slow
def test_without_a_cache_a_mismatch_is_caught_and_pull_is_suggested(tracked):
    push_data(tracked)
    _forget_cache(tracked)
    check_data(tracked)  # intact data matches
    _flip_bytes(tracked / "data" / "digits" / "val_x.npy")
    with pytest.raises(DataIntegrityError, match="dvc pull --force data.dvc") as info:
        check_data(tracked)
    assert "modified: data/digits/val_x.npy" in str(info.value)  # DVC reads the manifest from the remote
    run_dvc(tracked, "pull", "--force", "--quiet", "data.dvc")
    check_data(tracked)


@pytest.mark.slow
def test_without_any_manifest_the_directory_hash_still_catches_a_mismatch(tracked):
    _forget_cache(tracked)  # nothing pushed either
    check_data(tracked)
    _flip_bytes(tracked / "data" / "digits" / "val_x.npy")
    with pytest.raises(DataIntegrityError, match="dvc pull --force data.dvc") as info:
        check_data(tracked)
    assert "modified: data/;" in str(info.value) and "no file-level detail" in str(info.value)
    prepare_dataset("digits", tracked / "data")  # preparation is deterministic: same bytes, same hash
    check_data(tracked)


def test_a_passed_check_is_not_asked_again_until_a_file_is_touched(tracked, monkeypatch):
    calls = _count_dvc_calls(monkeypatch)
    check_data(tracked)
    assert len(calls) == 1, "the first check asks DVC"
    check_data(tracked)
    assert len(calls) == 1, "nothing under data/ changed since DVC said it matches"
    # a file merely touched: DVC is asked again
    path = tracked / "data" / "digits" / "train_x.npy"
    stamp = path.stat()
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    check_data(tracked)
    assert len(calls) == 2
    # a rewrite of the same size that puts the old modification time back: its change time moved, DVC is asked
    # (whose own stat cache then decides)
    stamp = path.stat()
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    check_data(tracked)
    assert len(calls) == 3
    _flip_bytes(path)
    with pytest.raises(DataIntegrityError, match="modified: data/digits/train_x.npy"):
        check_data(tracked)
    assert len(calls) == 4


def test_a_check_passed_for_another_version_counts_for_nothing(tracked, monkeypatch):
    check_data(tracked)
    record = tracked / dvc_versioning.VERIFIED_FILE
    record.write_text(record.read_text().replace(tracked_version(tracked), "another.dir"))
    calls = _count_dvc_calls(monkeypatch)
    check_data(tracked)
    assert len(calls) == 1, "DVC asked again"
    record.write_text("not json")
    check_data(tracked)
    assert len(calls) == 2, "an unreadable record is no shortcut either"


def test_nothing_to_check_without_data_dvc_or_data(project, tmp_path):
    check_data(tmp_path / "empty")  # neither exists
    ensure_repo(project)
    prepare_dataset("digits", project / "data")
    check_data(project)  # data/ but no data.dvc yet
    track_data(project)
    shutil.rmtree(project / "data")
    check_data(project)  # data.dvc but data/ not prepared yet (a fresh clone)
