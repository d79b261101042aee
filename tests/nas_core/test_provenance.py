"""One provenance value, one spelling of each key, wherever it is written."""

import dataclasses

from nas_core.provenance import TAG_PREFIX, Provenance, code_version


def test_tags_round_trip_and_leave_unknown_fields_out():
    search = Provenance("s-1", "digits", "abc.dir", "c0ffee", True, "0.1.0")
    assert search.tags() == {
        "nas.search_id": "s-1", "nas.dataset": "digits", "nas.dataset_version": "abc.dir", "nas.code_commit": "c0ffee",
        "nas.code_dirty": "true", "nas.package_version": "0.1.0",
    }  # fmt: skip
    model = search.with_search_run("run-1").for_model("h" * 8, "run-2", "run-3")
    assert Provenance.from_tags(model.tags()) == model
    assert model.tags(prefix="")["candidate_run_id"] == "run-2" and model.tags()["nas.final_run_id"] == "run-3"
    assert set(model.tags()) == {TAG_PREFIX + f.name for f in dataclasses.fields(Provenance)}


def test_a_search_records_the_code_it_ran():
    commit, dirty, package = code_version()
    provenance = Provenance.of_search("s", "digits", "v")
    assert (provenance.code_commit, provenance.code_dirty, provenance.package_version) == (commit, dirty, package)
    assert commit is None or len(commit) == 40
