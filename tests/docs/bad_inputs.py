"""Files for the examples of docs/bad-input.md: placeholder name -> maker ``(folder) -> path`` written in ``folder``.

A row's example such as ``nas validate {genome_cycle}`` gets the path that ``MAKERS["genome_cycle"]`` writes.
Add a maker here for a new kind of bad file (datasets, checkpoints) and use its name in the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nas_core.limits import MAX_GENOME_BYTES, MAX_ID_LENGTH, MAX_OPS
from tests.nas_core.data.writers import write_image_folder

CONV = {"channels": 16, "kernel": 3, "stride": 1}


def _genome(nodes: list[tuple[str, str] | tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "nodes": [{"id": n[0], "op": n[1], "settings": n[2] if len(n) > 2 else {}} for n in nodes],
        "edges": [list(e) for e in edges],
    }


def _chain(ops: list[str]) -> dict[str, Any]:
    """input -> ops... -> output (ops without settings, or conv with CONV)."""
    ids = ["in", *(f"n{i}" for i in range(len(ops))), "out"]
    nodes = [("in", "input"), *((f"n{i}", op, CONV if op == "conv" else {}) for i, op in enumerate(ops)), ("out", "output")]
    return _genome(nodes, list(zip(ids, ids[1:], strict=False)))


def _text(name: str, text: str | bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return make


def _json(name: str, data: Any) -> Callable[[Path], Path]:
    return _text(name, json.dumps(data))


def _npz(name: str, x: np.ndarray, y: np.ndarray, **extra: Any) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        np.savez(folder / name, x=x, y=y, **extra)
        return folder / name

    return make


def _images(name: str, spoil: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        root = write_image_folder(folder / name)
        spoil(root)
        return root

    return make


def _resumable(name: str, state: str | bytes) -> Callable[[Path], Path]:
    """An interrupted search's output folder (``search.json``) whose ``state.json`` holds ``state``."""

    def make(folder: Path) -> Path:
        out = folder / name
        out.mkdir()
        saved = {"search_id": "s1", "mlflow_run_id": "", "config": {"dataset": "digits", "budget": 2, "output": str(out)}}
        (out / "search.json").write_text(json.dumps(saved))
        (out / "state.json").write_bytes(state.encode() if isinstance(state, str) else state)
        return out

    return make


_Y = np.arange(40) % 2
_X = np.random.default_rng(0).random((40, 1, 6))


def _folder(folder: Path) -> Path:
    path = folder / "a-folder"
    path.mkdir(exist_ok=True)
    return path


VALID = _chain(["conv", "identity"])

MAKERS: dict[str, Callable[[Path], Path]] = {
    # paths
    "missing": lambda folder: folder / "no-such-file",
    "folder": _folder,
    "file": _text("a-file.txt", "not a folder\n"),
    # YAML config files
    "yaml_syntax": _text("syntax.yaml", "budget: [1,\n"),
    "yaml_list": _text("list.yaml", "- budget\n- 3\n"),
    "yaml_unknown_key": _text("unknown.yaml", "budgett: 3\n"),
    "yaml_python_tag": _text("tag.yaml", "budget: !!python/object/apply:os.getcwd []\n"),
    "yaml_bool_number": _text("bool.yaml", "budget: true\n"),
    "yaml_string_number": _text("string.yaml", "budget: '5'\n"),
    "yaml_float_count": _text("float.yaml", "epochs: 2.5\n"),
    "yaml_inf": _text("inf.yaml", "lr: .inf\n"),
    "yaml_string_switch": _text("switch.yaml", "download: 'yes'\n"),
    "yaml_not_utf8": _text("latin1.yaml", "experiment: caf\xe9\n".encode("latin-1")),
    # genome files
    "genome_valid": _json("valid.json", VALID),
    "genome_binary": _text("binary.json", bytes(range(256))),
    "genome_too_big": _text("big.json", b" " * (MAX_GENOME_BYTES + 1)),
    "genome_deep": _text("deep.json", "[" * 100_000 + "]" * 100_000),
    "genome_list": _json("list.json", [1, 2]),
    "genome_syntax": _text("syntax.json", '{"nodes": [}'),
    "genome_nan": _text("nan.json", json.dumps(VALID)[:-1] + ', "hparams": {"lr": NaN}}'),
    "genome_huge_number": _text("number.json", json.dumps(VALID).replace('"channels": 16', '"channels": ' + "9" * 5000)),
    "genome_too_many_nodes": _json("many.json", _chain(["identity"] * (MAX_OPS + 1))),
    "genome_long_id": _json("long-id.json", _genome([("in", "input"), ("x" * (MAX_ID_LENGTH + 1), "identity")], [])),
    "genome_op_not_text": _json("op.json", _genome([("in", "input"), ("a", 3)], [])),  # type: ignore[list-item]
    "genome_unknown_key": _json("key.json", {**VALID, "extra": 1}),
    "genome_duplicate_ids": _json("dupes.json", _genome([("in", "input"), ("a", "identity"), ("a", "identity"),
                                                         ("out", "output")], [("in", "a"), ("a", "out")])),
    "genome_unknown_node": _json("edge.json", _genome([("in", "input"), ("a", "identity"), ("out", "output")],
                                                      [("in", "a"), ("a", "ghost"), ("a", "out")])),
    "genome_cycle": _json("cycle.json", _genome([("in", "input"), ("a", "identity"), ("b", "identity"), ("out", "output")],
                                                [("in", "a"), ("a", "b"), ("b", "a"), ("b", "out")])),
    "genome_unknown_op": _json("op-name.json", _chain(["conv", "teleport"])),
    "genome_bad_setting": _json("setting.json", _genome([("in", "input"), ("a", "conv", {**CONV, "channels": "16"}),
                                                         ("out", "output")], [("in", "a"), ("a", "out")])),
    "genome_dead_end": _json("dead-end.json", _genome([("in", "input"), ("a", "identity"), ("b", "identity"), ("out", "output")],
                                                      [("in", "a"), ("in", "b"), ("a", "out")])),
    "genome_nine_ops": _json("nine.json", _chain(["identity"] * 9)),
    "genome_foreign_op": _json("foreign.json", _chain(["conv", "nor_conv_3x3"])),
    "npz_nan": _npz("nan.npz", np.where(_X < 0.1, np.nan, _X), _Y),
    "npz_huge": _npz("huge.npz", np.full((40, 1, 6), 1e39), _Y),
    "npz_one_class": _npz("one-class.npz", _X, np.zeros(40, int)),
    "npz_three": _npz("three.npz", _X[:3], np.array([0, 1, 0])),
    "npz_negative_scale": _npz("scale.npz", np.zeros((40, 1, 6), np.uint8), _Y, scale=np.array(-1.0)),
    "images_empty_class": _images("empty-class", lambda root: (root / "owl").mkdir()),
    "images_corrupt": _images("corrupt", lambda root: (root / "dog" / "9.png").write_bytes(b"not a png")),
    "resume_empty_state": _resumable("empty-state", ""),
    "resume_truncated_state": _resumable("truncated-state", '{"format": 3, "search_id": "s1", "finis'),
    "resume_list_state": _resumable("list-state", "[1, 2]"),
}  # fmt: skip
