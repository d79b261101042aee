"""The MLflow UI shows a search: a real ``mlflow server``, ``nas search`` against it, the pages in headless Chromium.

The UI is a React app that fetches its data after the page loads, so Chromium is driven over the DevTools
protocol (with the ``websockets`` client Prefect already depends on) and each page is polled until it shows what
a user would look for: the search run and, expanded under it, its candidates; the plots on the search's and the best
candidate's Artifacts tab, each previewed as a decoded image. Screenshots are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from tests.conftest import REPO_ROOT, MlflowServer, make_project

NAS = str(Path(sys.executable).parent / "nas")
ARTIFACTS = REPO_ROOT / "test-artifacts"
SEARCH_PLOTS = ("best_so_far.png", "accuracy_vs_cost.png", "lineage.png")
CANDIDATE_PLOTS = ("architecture.png", "learning_curves.png")
PAGE_TIMEOUT_S = 60


class PageError(RuntimeError):
    """An expression failed in the page (it may still be loading)."""


def _debugging_port(port_file: Path) -> str:
    """The port in Chromium's ``DevToolsActivePort`` file once it is fully written (port, then path), else ''."""
    lines = port_file.read_text().split() if port_file.exists() else []
    return lines[0] if len(lines) >= 2 else ""


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        port_file = profile / "DevToolsActivePort"  # Chromium writes its debugging port here (port 0: any free one)
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=1400,1000", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (port := _debugging_port(port_file)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not open its DevTools port (exit code {self.process.poll()})")
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(target for target in json.load(response) if target["type"] == "page")
        self.ws: ClientConnection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command's result; the events arriving meanwhile are dropped."""
        call = next(self.ids)
        self.ws.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=PAGE_TIMEOUT_S))
            if message.get("id") == call:
                if "error" in message:
                    raise PageError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise PageError(result["exceptionDetails"].get("exception", {}).get("description", expression))
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Load ``url`` afresh, as a user following a link does."""
        self.send("Page.navigate", url="about:blank")
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, what: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
        """The first truthy value of ``expression``, polled; on timeout, fails with the page's visible text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(PageError):  # the page is still loading
                if value := self.evaluate(expression):
                    return value
            time.sleep(0.25)
        text = ""
        with contextlib.suppress(PageError):
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
        pytest.fail(f"the page never showed {what} within {timeout:.0f}s; it shows: {' | '.join(text.split(chr(10)))[:2000]}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        """Stop Chromium and its helper processes (its whole process group)."""
        with contextlib.suppress(AttributeError):
            self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def text_has(*names: str) -> str:
    """JavaScript: does the page's visible text hold every name?"""
    return f"document.body && {json.dumps(list(names))}.every(name => document.body.innerText.includes(name))"


def image_width(alt: str) -> str:
    """JavaScript: the decoded width of the preview ``<img alt=...>``, 0 until it has loaded."""
    return f"[...document.querySelectorAll('img[alt={json.dumps(alt)}]')].map(i => i.complete && i.naturalWidth).find(w => w > 0)"


@pytest.fixture(scope="module")
def server(chromium: str, tmp_path_factory) -> Iterator[str]:
    """A real tracking server on loopback; asks for Chromium first, so a missing browser skips before anything boots."""
    mlflow_server = MlflowServer(tmp_path_factory.mktemp("mlflow-ui-server"))
    mlflow_server.start()
    try:
        yield mlflow_server.wait_ready()
    finally:
        mlflow_server.stop()


@pytest.fixture(scope="module")
def searched(server: str, prefect_server: str, tmp_path_factory) -> dict[str, Any]:
    """A tiny real search, the ``nas`` console script logging into the server; its summary plus the run names."""
    project = make_project(tmp_path_factory.mktemp("mlflow-ui") / "project")
    env = os.environ | {"MLFLOW_TRACKING_URI": server, "PREFECT_API_URL": prefect_server}
    proc = subprocess.run(
        [NAS, "search", "--budget", "2", "--epochs", "1", "--population", "2", "--output", "out", "--quiet"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((project / "out" / "summary.json").read_text())
    client = MlflowClient(server)
    parent = client.get_run(summary["mlflow_run_id"])
    candidates = {c["mlflow_run_id"]: client.get_run(c["mlflow_run_id"]).info.run_name for c in summary["candidates"]}
    assert len(candidates) == 2 and parent.info.run_name == f"search-{summary['search_id']}"
    best = summary["best"]["mlflow_run_id"]
    return {"url": server, "experiment": parent.info.experiment_id, "parent": parent, "candidates": candidates, "best": best}


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory) -> Iterator[Browser]:
    chrome = Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chrome
    finally:
        chrome.close()


def tree_has(*names: str) -> str:
    """JavaScript: does the Artifacts tab's file tree show a node for every name?"""
    node = "'[data-testid=artifact-tree-node][artifact-name=' + JSON.stringify(name) + ']'"
    return f"{json.dumps(list(names))}.every(name => document.querySelector({node}))"


def assert_screenshot(path: Path) -> None:
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 20_000  # a blank page is a few KB


def test_experiment_page_lists_the_search_and_its_candidates(searched, browser):
    url, parent, names = searched["url"], searched["parent"], sorted(searched["candidates"].values())
    browser.open(f"{url}/#/experiments/{searched['experiment']}/runs")
    browser.wait_for(text_has(parent.info.run_name), f"the search run {parent.info.run_name}")
    if not browser.evaluate(text_has(*names)):  # nested runs start collapsed: open the search's row, as a user does
        row = f"document.querySelector('a[href$=\"/runs/{parent.info.run_id}\"]')?.closest('[role=gridcell]')"
        expander = f"{row}?.querySelector('button[data-component-id*=runnamecellrenderer]')"
        assert browser.evaluate(f"{expander} ? ({expander}.click(), true) : false"), "no expander on the search run's row"
    browser.wait_for(text_has(*names), f"the candidates {names}")
    runs = MlflowClient(url).search_runs([searched["experiment"]])
    assert browser.evaluate(text_has(f"{len(runs)} matching runs"))
    assert_screenshot(browser.screenshot(ARTIFACTS / "mlflow-ui-experiment.png"))


def check_plots(browser: Browser, searched: dict[str, Any], run_id: str, plots: tuple[str, ...], tmp_path: Path) -> None:
    """The run's Artifacts tab opened on its first plot: every plot in the tree, the first previewed from its bytes."""
    url = searched["url"]
    browser.open(f"{url}/#/experiments/{searched['experiment']}/runs/{run_id}/artifactPath/plots/{plots[0]}")
    browser.wait_for(tree_has(*plots), f"the plots {plots} in the artifact tree")
    width = browser.wait_for(image_width(f"plots/{plots[0]}"), f"a preview of plots/{plots[0]}")
    with Image.open(MlflowClient(url).download_artifacts(run_id, f"plots/{plots[0]}", str(tmp_path))) as png:
        assert width == png.width
    browser.wait_for("!document.querySelector('.velocity-animating')", "the artifact tree at rest")  # for the screenshot


def test_search_run_artifacts_show_its_plots(searched, browser, tmp_path):
    check_plots(browser, searched, searched["parent"].info.run_id, SEARCH_PLOTS, tmp_path)
    assert_screenshot(browser.screenshot(ARTIFACTS / "mlflow-ui-search-plots.png"))


def test_the_best_candidates_run_artifacts_show_its_plots(searched, browser, tmp_path):
    """The best few candidates' figures are drawn at the end of the search, from their logged metrics."""
    check_plots(browser, searched, searched["best"], CANDIDATE_PLOTS, tmp_path)
    assert_screenshot(browser.screenshot(ARTIFACTS / "mlflow-ui-candidate-plots.png"))
