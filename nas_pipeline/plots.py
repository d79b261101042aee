"""Small PNG figures of a search: architectures, learning curves, progress, accuracy vs cost, lineage.

Thread-safe (candidates render in worker threads): every figure is a ``matplotlib.figure.Figure`` on its
own Agg canvas, never pyplot's global state. matplotlib is imported inside the functions, so importing
this module stays cheap.

Multi-fidelity searches hold several entries per architecture (``hash``), one per budget (``fidelity``,
epochs trained). Accuracies at different budgets are not comparable, so the figures colour points by
fidelity; the best-so-far line follows the highest fidelity reached so far (it can step down when the
first longer-budget result arrives), and accuracy vs cost keeps each architecture's highest-fidelity
entry.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from nas_core.genome import Genome, Node
    from nas_core.search.summary import SearchSummary

DPI = 100
_FONT = 8
_OP_COLOURS = {
    "input": "#d9d9d9", "output": "#d9d9d9",
    "conv": "#9ecae1", "sepconv": "#c6dbef", "nor_conv_1x1": "#c6dbef", "nor_conv_3x3": "#9ecae1",
    "maxpool": "#a1d99b", "avgpool": "#c7e9c0", "avg_pool_3x3": "#c7e9c0",
    "identity": "#f0f0f0", "skip_connect": "#f0f0f0", "none": "#fcbba1",
}  # fmt: skip
_ORIGIN_STYLES = {  # lineage edges: colour, line style
    "mutation": ("#1f77b4", "-"),
    "crossover": ("#ff7f0e", "--"),
    "local": ("#2ca02c", ":"),
    "model": ("#9467bd", "-."),
    "promotion": ("#d62728", "-"),
}
_FAILED = "#7f7f7f"


# ---- shared helpers -----------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _chart(width: float, height: float, right: float = 0.97, top: float = 0.9) -> tuple[Figure, Axes]:
    """A figure with one axes and fixed margins (a layout engine would double the rendering time)."""
    figure = _figure(width, height)
    figure.subplots_adjust(left=0.1, right=right, bottom=0.15, top=top)
    return figure, figure.add_subplot()


def warm_up() -> None:
    """Draw an empty chart with a title in memory: matplotlib's figure and Agg modules and its fonts load now, not
    at a search's first figure (a long-lived process draws many)."""
    figure, _ = _chart(2.0, 1.0)
    _title(figure, "warm-up")
    figure.savefig(io.BytesIO(), format="png", dpi=DPI)


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _title(figure: Figure, text: str, x: float = 0.5, ha: str = "center") -> None:
    """A figure title: ``Axes.set_title`` would measure every tick label to place it (a third of the time)."""
    figure.text(x, 0.985, _plain(text), ha=ha, va="top", fontsize=_FONT + 1)


def _plain(text: str) -> str:
    """Text shown as written: a ``$`` from data must not switch matplotlib to mathtext."""
    return str(text).replace("$", r"\$")


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, null, NaN or non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ok(candidate: Mapping[str, Any]) -> bool:
    return candidate.get("status") == "ok" and _number(candidate.get("val_accuracy")) is not None


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=_FONT + 1, color=_FAILED)


def _fidelity_colours(candidates: Sequence[Mapping[str, Any]]) -> dict[Any, str]:
    from matplotlib import colormaps

    fidelities = sorted({c.get("fidelity") or 0 for c in candidates})
    palette = colormaps["viridis"]
    if len(fidelities) == 1:
        return {fidelities[0]: "#1f77b4"}
    return {f: palette(0.9 * i / (len(fidelities) - 1)) for i, f in enumerate(fidelities)}


def _fidelity_label(fidelity: Any) -> str:
    return f"{fidelity} epochs" if fidelity else "ok"


def _finish_order(candidates: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[float], str]:
    """Candidates in the order they finished, their x values, and the axis label.

    ``finished_seconds`` when every candidate has it; older summaries lack it, then the index is used.
    """
    if candidates and all(_number(c.get("finished_seconds")) is not None for c in candidates):
        ordered = sorted(candidates, key=lambda c: (c["finished_seconds"], c.get("index", 0)))
        return ordered, [float(c["finished_seconds"]) for c in ordered], "seconds since the search started"
    ordered = sorted(candidates, key=lambda c: c.get("index", 0))
    return ordered, [float(c.get("index", i + 1)) for i, c in enumerate(ordered)], "candidate index"


# ---- architecture -------------------------------------------------------------------------------
def node_label(node: Node, dims: int = 2) -> str:
    """A short label of an op with its key settings, e.g. ``conv 3x3 c32 s2``."""
    s = node.settings
    parts = [node.op]
    if "kernel" in s:
        parts.append(f"{s['kernel']}x{s['kernel']}" if dims == 2 else f"k{s['kernel']}")
    if "channels" in s:
        parts.append(f"c{s['channels']}")
    if s.get("stride", 1) != 1:
        parts.append(f"s{s['stride']}")
    parts += [f"{k}={v}" for k, v in sorted(s.items()) if k not in ("kernel", "channels", "stride")]
    return " ".join(str(p) for p in parts)


def _mean(values: Sequence[float], default: float) -> float:
    return sum(values) / len(values) if values else default


_WAYPOINT = "\0"  # prefix of waypoint ids (no node id starts with NUL)
_DUMMY_WIDTH = 0.3  # a long edge's waypoint takes this fraction of a box's slot in its layer


def _layout(genome: Genome) -> tuple[dict[str, tuple[float, int]], dict[tuple[str, str], list[str]], int, float]:
    """A layered (Sugiyama-style) layout: positions (x, layer) of nodes and of waypoints, each edge's waypoints,
    the number of layers and the widest layer (in box slots).

    layer = longest path from the input; an edge over several layers gets a waypoint in each layer it
    crosses, so it runs beside the boxes instead of through them; a few barycentre sweeps order each
    layer to reduce crossings.
    """
    order = genome.topological_order()
    layer = dict.fromkeys(order, 0)
    for node_id in order:
        for succ in genome.successors(node_id):
            layer[succ] = max(layer[succ], layer[node_id] + 1)
    waypoints: dict[tuple[str, str], list[str]] = {}
    up: dict[str, list[str]] = {n: [] for n in order}
    down: dict[str, list[str]] = {n: [] for n in order}
    for src, dst in genome.edges:
        chain = [f"{_WAYPOINT}{src}>{dst}@{depth}" for depth in range(layer[src] + 1, layer[dst])]
        waypoints[(src, dst)] = chain
        for depth, point in zip(range(layer[src] + 1, layer[dst]), chain, strict=True):
            layer[point], up[point], down[point] = depth, [], []
        path = [src, *chain, dst]
        for a, b in itertools.pairwise(path):
            down[a].append(b)
            up[b].append(a)
    rows: dict[int, list[str]] = {}
    for item in layer:  # declaration order first, then waypoints in edge order
        rows.setdefault(layer[item], []).append(item)
    slot = {item: (_DUMMY_WIDTH if item.startswith(_WAYPOINT) else 1.0) for item in layer}
    x: dict[str, float] = {}

    def place(row: list[str]) -> None:
        left = -sum(slot[i] for i in row) / 2
        for item in row:
            x[item] = left + slot[item] / 2
            left += slot[item]

    for row in rows.values():
        place(row)
    depths = sorted(rows)
    for sweep in range(4):
        neighbours, sequence = (up, depths[1:]) if sweep % 2 == 0 else (down, depths[-2::-1])
        for depth in sequence:
            rank = {item: i for i, item in enumerate(rows[depth])}
            rows[depth].sort(key=lambda i: (_mean([x[n] for n in neighbours[i]], x[i]), rank[i]))
            place(rows[depth])
    widest = max(sum(slot[i] for i in row) for row in rows.values())
    return {item: (x[item], layer[item]) for item in layer}, waypoints, len(rows), widest


def architecture_png(genome: Genome, path: Path, title: str = "", *, dims: int = 2) -> Path:
    """The genome's DAG: one box per op (with its key settings), arrows for edges, input at the top.

    ``dims=1`` labels kernels of sequence genomes as ``k3`` instead of ``3x3``.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as CurvePath

    positions, waypoints, depth, widest = _layout(genome)
    x_gap, y_gap, box_w, box_h = 2.1, 1.0, 1.9, 0.5
    fig_w = min(16.0, max(2.8, 0.8 * widest * x_gap))
    fig_h = min(20.0, max(2.0, 0.5 * depth * y_gap + (0.35 if title else 0.1) + (0.25 if genome.hparams else 0)))
    figure = _figure(fig_w, fig_h)
    bottom = 0.06 if genome.hparams else 0.01
    ax = figure.add_axes((0.01, bottom, 0.98, (0.91 if title else 0.99) - bottom))
    ax.set_axis_off()
    centre = {item: (xp * x_gap, -lay * y_gap) for item, (xp, lay) in positions.items()}
    nodes = genome.node_map
    for node in nodes.values():
        cx, cy = centre[node.id]
        ax.add_patch(
            FancyBboxPatch(
                (cx - box_w / 2, cy - box_h / 2), box_w, box_h, boxstyle="round,pad=0,rounding_size=0.12",
                facecolor=_OP_COLOURS.get(node.op, "#fdd0a2"), edgecolor="#525252", linewidth=0.8,
                linestyle="--" if node.op == "none" else "-",
            )
        )  # fmt: skip
        ax.text(cx, cy, _plain(node_label(node, dims)), ha="center", va="center", fontsize=_FONT)
    for (src, dst), chain in waypoints.items():
        points = [(centre[src][0], centre[src][1] - box_h / 2)]
        for point in chain:  # run straight down beside the boxes of the layers it crosses
            px, py = centre[point]
            points += [(px, py + box_h / 2), (px, py - box_h / 2)]
        points.append((centre[dst][0], centre[dst][1] + box_h / 2))
        curve = CurvePath(points, [CurvePath.MOVETO] + [CurvePath.LINETO] * (len(points) - 1))
        ax.add_patch(
            FancyArrowPatch(path=curve, arrowstyle="-|>", mutation_scale=8, shrinkA=0, shrinkB=0, color="#404040", linewidth=0.8)
        )
    half = max(widest * x_gap / 2, box_w / 2 + 0.1)
    ax.set_xlim(-half, half)
    ax.set_ylim(-(depth - 1) * y_gap - box_h / 2 - 0.05, box_h / 2 + 0.05)
    if title:
        _title(figure, title)
    if genome.hparams:
        text = ", ".join(f"{k}={v}" for k, v in sorted(genome.hparams.items()))
        figure.text(0.5, 0.01, _plain(text), ha="center", va="bottom", fontsize=_FONT - 1, color="#404040")
    return _save(figure, path)


# ---- one candidate ------------------------------------------------------------------------------
def learning_curves_png(history: Sequence[Mapping[str, float]], path: Path, title: str = "") -> Path:
    """Per-epoch losses (left axis) and validation accuracy / F1 (right axis); missing or NaN values are gaps."""
    figure, ax = _chart(5.0, 3.0, right=0.88)
    rows = sorted((h for h in history if _number(h.get("epoch")) is not None), key=lambda h: h["epoch"])
    epochs = [float(h["epoch"]) for h in rows]
    lines = []
    right = None
    for key, colour, style, on_right in (
        ("train_loss", "#1f77b4", "-", False),
        ("val_loss", "#1f77b4", "--", False),
        ("val_accuracy", "#d62728", "-", True),
        ("val_f1", "#ff7f0e", ":", True),
    ):
        values = [_number(h.get(key)) for h in rows]
        if all(v is None for v in values):
            continue
        if on_right and right is None:
            right = ax.twinx()
            right.set_ylabel("accuracy / F1", fontsize=_FONT)
            right.tick_params(labelsize=_FONT - 1)
        target = right if on_right else ax
        ys = [math.nan if v is None else v for v in values]
        lines += target.plot(epochs, ys, style, color=colour, marker="o", markersize=2.5, linewidth=1.2, label=key)
    if not lines:
        _no_data(ax, "no per-epoch metrics")
    else:
        ax.legend(lines, [line.get_label() for line in lines], fontsize=_FONT - 1, loc="center right", frameon=False)
    ax.set_xlabel("epoch", fontsize=_FONT)
    ax.set_ylabel("loss", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    if title:
        _title(figure, title)
    return _save(figure, path)


def evaluation_pngs(
    genome: Genome, history: Sequence[Mapping[str, float]], folder: Path, title: str = "", dims: int = 2
) -> list[Path]:
    """An evaluation's figures in ``folder``: ``architecture.png``, and ``learning_curves.png`` when there is history."""
    paths = [architecture_png(genome, Path(folder) / "architecture.png", title, dims=dims)]
    if history:
        paths.append(learning_curves_png(history, Path(folder) / "learning_curves.png", title))
    return paths


# ---- the whole search ---------------------------------------------------------------------------
def _mark_failed(ax: Axes, xs: Sequence[float]) -> None:
    """Failed candidates as grey x marks along the bottom edge (they have no accuracy)."""
    if xs:
        ax.scatter(xs, [0.03] * len(xs), marker="x", color=_FAILED, s=18, linewidths=1,
                   transform=ax.get_xaxis_transform(), label=f"failed ({len(xs)})")  # fmt: skip
        ax.update_datalim([(x, 0.0) for x in xs], updatey=False)  # a blended transform does not widen the x range itself
        ax.autoscale_view(scaley=False)


def best_so_far_history(candidates: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(x, best validation accuracy) after each ok candidate, in finishing order, at the highest fidelity so far."""
    ordered, xs, _ = _finish_order(candidates)
    steps: list[tuple[float, float]] = []
    top_fidelity, best = -math.inf, -math.inf
    for candidate, x in zip(ordered, xs, strict=True):
        if not _ok(candidate):
            continue
        fidelity, accuracy = candidate.get("fidelity") or 0, float(candidate["val_accuracy"])
        if fidelity > top_fidelity:
            top_fidelity, best = fidelity, accuracy
        elif fidelity == top_fidelity:
            best = max(best, accuracy)
        steps.append((x, best))
    return steps


def best_so_far_png(candidates: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Validation accuracy of every candidate over time (coloured by fidelity) and the best so far."""
    figure, ax = _chart(6.0, 3.4)
    ordered, xs, xlabel = _finish_order(candidates)
    colours = _fidelity_colours([c for c in ordered if _ok(c)] or [{}])
    done = [(c, x) for c, x in zip(ordered, xs, strict=True) if _ok(c)]
    for fidelity, colour in colours.items():
        points = [(x, c["val_accuracy"]) for c, x in done if (c.get("fidelity") or 0) == fidelity]
        if points:
            ax.scatter(*zip(*points, strict=True), s=14, color=colour, alpha=0.8, label=_fidelity_label(fidelity), zorder=2)
    steps = best_so_far_history(ordered)
    if steps:
        sx, sy = zip(*steps, strict=True)
        ax.step(sx, sy, where="post", color="#d62728", linewidth=1.5, label="best so far", zorder=3)
    else:
        _no_data(ax, "no successful candidate")
    _mark_failed(ax, [x for c, x in zip(ordered, xs, strict=True) if not _ok(c)])
    if xlabel == "candidate index":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _accuracy_axes(ax, xlabel)
    _title(figure, "search progress")
    return _save(figure, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated ``(cost, accuracy)`` points: minimum cost, maximum accuracy.

    A point is dominated when another is at least as good in both and better in one; equal points are
    all kept. Points with a NaN or infinite coordinate are never on the front.
    """
    from nas_core.strategies.multi_objective import non_dominated_sort  # NSGA-II's sort, on minimised objectives

    valid = [i for i, (c, a) in enumerate(points) if math.isfinite(c) and math.isfinite(a)]
    fronts = non_dominated_sort([(points[i][0], -points[i][1]) for i in valid])
    return sorted(valid[j] for j in fronts[0]) if fronts else []


def _accuracy_axes(ax: Any, xlabel: str) -> None:
    """Labels, ticks, grid and legend of a validation-accuracy chart."""
    ax.set_xlabel(xlabel, fontsize=_FONT)
    ax.set_ylabel("validation accuracy", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=_FONT - 1, loc="lower right", frameon=False)


def _latest_per_architecture(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each architecture's ok entry at its highest fidelity (the last one trained on ties)."""
    chosen: dict[Any, Mapping[str, Any]] = {}
    for c in sorted((c for c in candidates if _ok(c)), key=lambda c: (c.get("fidelity") or 0, c.get("index", 0))):
        chosen[c.get("hash") or id(c)] = c
    return sorted(chosen.values(), key=lambda c: c.get("index", 0))


def accuracy_vs_cost_png(
    candidates: Sequence[Mapping[str, Any]], path: Path, cost: str = "params", marked: Mapping[str, str] | None = None
) -> Path:
    """Validation accuracy against ``cost`` (``params``, ``flops`` or ``latency_ms``), the Pareto front highlighted;
    ``marked`` (hash -> label) stars those architectures and writes their labels beside them."""
    figure, ax = _chart(6.0, 3.4)
    entries = [c for c in _latest_per_architecture(candidates) if _number(c.get(cost)) is not None]
    colours = _fidelity_colours(entries or [{}])
    for fidelity, colour in colours.items():
        points = [(c[cost], c["val_accuracy"]) for c in entries if (c.get("fidelity") or 0) == fidelity]
        if points:
            ax.scatter(*zip(*points, strict=True), s=16, color=colour, alpha=0.7, label=_fidelity_label(fidelity), zorder=2)
    points = [(float(c[cost]), float(c["val_accuracy"])) for c in entries]
    front = sorted((points[i] for i in pareto_front(points)), key=lambda p: (p[0], -p[1]))
    if front:
        ax.step(*zip(*front, strict=True), where="post", color="#d62728", linewidth=1.2, zorder=3)
        ax.scatter(*zip(*front, strict=True), s=40, facecolors="none", edgecolors="#d62728", linewidths=1.2, label="Pareto front",
                   zorder=4)  # fmt: skip
    else:
        _no_data(ax, f"no successful candidate with {cost}")
    stars = [c for c in entries if c.get("hash") in (marked or {})]
    if stars:
        ax.scatter([c[cost] for c in stars], [c["val_accuracy"] for c in stars], s=90, marker="*", color="#ff7f0e",
                   edgecolors="black", linewidths=0.5, label="handed over", zorder=5)  # fmt: skip
        middle = sum(ax.get_xlim()) / 2
        for c in stars:
            right = c[cost] > middle  # labels on the right half go to the left of their star, inside the axes
            ax.annotate(marked[c["hash"]], (c[cost], c["val_accuracy"]), textcoords="offset points",
                        xytext=(-6 if right else 6, -10), ha="right" if right else "left", fontsize=_FONT - 2)  # fmt: skip
    failed = [float(c[cost]) for c in candidates if not _ok(c) and _number(c.get(cost)) is not None]
    _mark_failed(ax, failed)
    costs = [p[0] for p in points] + failed
    if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    _accuracy_axes(ax, cost)
    _title(figure, f"accuracy vs {cost}")
    return _save(figure, path)


def lineage_edges(candidates: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """(parent index, child index, origin) for every parent link.

    Parents are found by run id when recorded, else by hash (the latest earlier entry of that architecture);
    a ``promotion`` links the lower-fidelity entry of the same hash (``promoted_from`` when recorded).
    """
    by_run = {c["mlflow_run_id"]: c["index"] for c in candidates if c.get("mlflow_run_id") and "index" in c}
    ordered = sorted((c for c in candidates if "index" in c), key=lambda c: c["index"])
    edges: list[tuple[int, int, str]] = []
    for child in ordered:
        index, origin = child["index"], child.get("origin") or "?"
        earlier = [c for c in ordered if c["index"] < index]
        parents: list[int] = []
        if origin == "promotion":
            if child.get("promoted_from") in by_run:
                parents = [by_run[child["promoted_from"]]]
            else:
                fidelity = child.get("fidelity") or 0
                lower = [c for c in earlier if c.get("hash") == child.get("hash") and (c.get("fidelity") or 0) < fidelity]
                parents = [max(lower, key=lambda c: (c.get("fidelity") or 0, c["index"]))["index"]] if lower else []
        else:
            run_ids = child.get("parent_run_ids") or []
            parents = [by_run[r] for r in run_ids if r in by_run]
            if not parents:
                for parent_hash in child.get("parents") or []:
                    same = [c["index"] for c in earlier if c.get("hash") == parent_hash]
                    if same:
                        parents.append(same[-1])
        edges += [(p, index, origin) for p in dict.fromkeys(parents) if p != index]
    return edges


def lineage_png(candidates: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Which parent produced which child: one dot per candidate (column = generation), edges styled by origin."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    ordered = sorted((c for c in candidates if "index" in c), key=lambda c: c["index"])
    columns: dict[int, list[Mapping[str, Any]]] = {}
    for c in ordered:
        columns.setdefault(int(c.get("generation") or 0), []).append(c)
    generations = sorted(columns)
    tallest = max((len(v) for v in columns.values()), default=1)
    width, height = min(14.0, max(4.0, 0.9 * len(generations) + 1.5)), min(12.0, max(3.0, 0.28 * tallest + 1.0))
    figure, ax = _chart(width, height, right=0.92, top=0.84)
    position: dict[int, tuple[float, float]] = {}
    for g in generations:
        for row, c in enumerate(columns[g]):
            position[c["index"]] = (float(g), (len(columns[g]) - 1) / 2 - row)
    handles: dict[str, Any] = {}
    for parent, child, origin in lineage_edges(ordered):
        if parent not in position or child not in position:
            continue
        colour, style = _ORIGIN_STYLES.get(origin, ("#8c564b", "-"))
        same_column = position[parent][0] == position[child][0]
        ax.add_patch(
            FancyArrowPatch(
                position[parent], position[child], arrowstyle="-|>", mutation_scale=7, shrinkA=4, shrinkB=4, color=colour,
                linestyle=style, linewidth=1.6 if origin == "promotion" else 0.9, alpha=0.8,
                connectionstyle=f"arc3,rad={0.4 if same_column else 0.08}",
            )
        )  # fmt: skip
        handles.setdefault(origin, Line2D([], [], color=colour, linestyle=style, linewidth=1.2, label=origin))
    ok = [c for c in ordered if _ok(c)]
    if ok:
        xy = [position[c["index"]] for c in ok]
        dots = ax.scatter(*zip(*xy, strict=True), c=[c["val_accuracy"] for c in ok], cmap="viridis", s=36, edgecolors="#404040",
                          linewidths=0.5, zorder=3)  # fmt: skip
        bar = figure.colorbar(dots, ax=ax, shrink=0.8, pad=0.01)
        bar.set_label("validation accuracy", fontsize=_FONT)
        bar.ax.tick_params(labelsize=_FONT - 1)
    failed = [position[c["index"]] for c in ordered if not _ok(c)]
    if failed:
        ax.scatter(*zip(*failed, strict=True), marker="x", color=_FAILED, s=30, zorder=3)
        handles["failed"] = Line2D([], [], marker="x", color=_FAILED, linestyle="", label="failed")
    if len(ordered) <= 60:
        for c in ordered:
            x, y = position[c["index"]]
            ax.annotate(str(c["index"]), (x, y), xytext=(5, 3), textcoords="offset points", fontsize=_FONT - 2, zorder=4)
    if not ordered:
        _no_data(ax, "no candidates")
    ax.set_xticks(generations)
    ax.set_yticks([])
    ax.set_xlabel("generation", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if generations:
        ax.set_xlim(generations[0] - 0.5, generations[-1] + 0.5)
        ax.set_ylim(-tallest / 2 - 0.3, tallest / 2 + 0.3)
    if handles:  # above the axes: the dots fill the whole plot area
        ax.legend(handles=list(handles.values()), fontsize=_FONT - 1, loc="lower left", bbox_to_anchor=(0, 1), ncol=len(handles),
                  frameon=False, borderaxespad=0.2)  # fmt: skip
    _title(figure, "lineage", x=0.98, ha="right")
    return _save(figure, path)


def search_plots(summary: SearchSummary, folder: Path) -> dict[str, Path]:
    """best_so_far.png, accuracy_vs_cost.png and lineage.png of a search's summary, written into ``folder``; with
    an exported front (``export: pareto``), accuracy_vs_latency.png with the handed-over models starred."""
    folder = Path(folder)
    candidates = list(summary.candidates)
    drawn = {
        "best_so_far": best_so_far_png(candidates, folder / "best_so_far.png"),
        "accuracy_vs_cost": accuracy_vs_cost_png(candidates, folder / "accuracy_vs_cost.png"),
        "lineage": lineage_png(candidates, folder / "lineage.png"),
    }
    if summary.pareto:
        marked = {m["hash"]: ", ".join((["best"] if m["best"] else []) + m["aliases"]) for m in summary.pareto}
        path = folder / "accuracy_vs_latency.png"
        drawn["accuracy_vs_latency"] = accuracy_vs_cost_png(candidates, path, "latency_ms", marked)
    return drawn
