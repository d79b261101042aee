"""The core runs a whole search with the tools blocked: no mlflow, prefect, dvc or onnx can be imported."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.nas_core.search.test_table_search import write_table

BLOCKED = ("mlflow", "prefect", "prefect_dask", "dvc", "onnx", "onnxruntime", "onnxscript")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, sys
    from pathlib import Path

    class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # finds the tools first and fails to load them, as if they were not installed

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked}:
                return importlib.machinery.ModuleSpec(name, self, origin=None)
            return None

        def create_module(self, spec):
            raise ModuleNotFoundError(f"blocked: {{spec.name}}", name=spec.name)

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Block())
    from nas_core.config import SearchConfig
    from nas_core.data.store import LocalDataStore
    from nas_core.search.loop import Search
    from nas_core.search.ports import MemoryTracker

    folder = Path(sys.argv[1])
    results = {{}}
    for name, settings in (
        ("table", dict(evaluator="table:" + sys.argv[2], space="nb201", budget=6, population=3,
                       select_metric="val", report_metric="test")),
        ("train", dict(budget=2, population=2, epochs=1, workers=1)),
    ):
        tracker = MemoryTracker()
        config = SearchConfig(project_dir=folder, output=folder / name, **settings)
        search = Search(config, LocalDataStore(folder / "data"), search_id=name, connect_tracker=lambda t=tracker: t)
        summary = search.run()
        results[name] = {{
            "candidates": len(summary.candidates),
            "ok": summary.ok_candidates,
            "best": summary.best.val_accuracy if summary.best else None,
            "runs": {{run_id: run.status for run_id, run in tracker.runs.items()}},
            "on_disk": json.loads((folder / name / "summary.json").read_text())["format"],
        }}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked})
    print(json.dumps({{"results": results, "loaded": loaded}}))
    """
).format(blocked=repr(set(BLOCKED)))


@pytest.mark.slow
def test_a_whole_search_runs_through_the_core_loop_with_the_tools_blocked(tmp_path):
    table = write_table(tmp_path / "toy_table.json")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(table)], capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], "no tool module was imported"
    table_run, trained = report["results"]["table"], report["results"]["train"]
    assert table_run["candidates"] == 6 and table_run["ok"] == 6 and table_run["best"] is not None
    assert trained["candidates"] == 2 and trained["ok"] == 2 and 0.0 < trained["best"] <= 1.0
    for result in (table_run, trained):
        assert result["on_disk"] == 1
        assert set(result["runs"].values()) == {"FINISHED"}, "every run (search and candidates) closed as finished"
        assert len(result["runs"]) == result["candidates"] + 1


def test_core_modules_import_no_tool():
    """Importing every core module loads none of the tools (a fresh interpreter, so nothing is cached)."""
    code = textwrap.dedent(
        f"""
        import pkgutil, importlib, sys, nas_core
        for info in pkgutil.walk_packages(nas_core.__path__, "nas_core."):
            importlib.import_module(info.name)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {set(BLOCKED)!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
