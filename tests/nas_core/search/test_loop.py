"""The end of the core loop: the best few's figures are drawn while the best is exported, and waited for."""

from __future__ import annotations

import threading

from nas_core.search.ports import ExportOutcome, MemoryTracker
from tests.nas_core.search.test_checkpoint import _search


class _DrawingTracker(MemoryTracker):
    """Records the thread each evaluation's figures are drawn in."""

    def __init__(self) -> None:
        super().__init__()
        self.drawing = threading.Event()
        self.threads: list[threading.Thread] = []

    def log_evaluation_plots(self, run_id, genome, title, dims, history=()):  # noqa: ANN001 - the Tracker's
        self.threads.append(threading.current_thread())
        self.drawing.set()


class _WaitingExporter:
    """Exports only once the figures are being drawn (a search drawing them after its export would wait here)."""

    thread: threading.Thread | None = None

    def export(self, request, tracker) -> ExportOutcome:  # noqa: ANN001 - an ExportRequest and a Tracker
        assert tracker.drawing.wait(60), "no figure was drawn while the best was exported"
        self.thread = threading.current_thread()
        return ExportOutcome(request.output / "model.onnx", 0.0, 1)


def test_the_figures_are_drawn_while_the_best_is_exported_and_before_the_search_ends(tmp_path, single_torch_thread):
    tracker, exporter = _DrawingTracker(), _WaitingExporter()
    summary = _search(tmp_path, tracker, exporter).run()
    assert summary.best is not None and exporter.thread is not None
    assert len(tracker.threads) == summary.ok_candidates == 2, "every trained candidate's figures (the best few)"
    assert all(thread is not exporter.thread for thread in tracker.threads)
    assert not any(thread.is_alive() for thread in tracker.threads), "waited for before the search ended"
