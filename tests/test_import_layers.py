"""The package's imports only look down the data flow (README "Layout"):
config -> data -> targets -> model -> (training | inference) -> (evaluation,
export, analysis, visualization) -> commands. Read from the source with ast
(module-level and function-level imports alike); no TensorFlow needed."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "atss_tf"
# Layer of each module or package (the longest matching prefix wins).
LAYERS = {
    "errors": 0, "files": 0, "progress": 0,
    "config": 1,
    "boxes": 2, "anchors": 2,
    "data": 3,
    "targets": 4,
    "losses": 5, "postprocess": 5,
    "model": 6,
    "training": 7, "inference": 7, "convert": 7, "tta": 7,
    "evaluation": 8, "export": 8, "export_tta": 8, "export_litert": 8, "analysis": 8,
    "visualization": 8,
    "commands": 9, "cli": 9,
}  # fmt: skip
# The arrows allowed to point up, each with the comment at its import.
ALLOWED_UP = {("training.fit", "evaluation")}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        out[name.removesuffix(".__init__") if name != "__init__" else ""] = path
    return out


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def _imports(modules: dict[str, Path]) -> set[tuple[str, str]]:
    edges = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if not target.startswith("atss_tf."):
                    continue
                target = target.removeprefix("atss_tf.")
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges.add((name, target))
    return edges


def test_imports_only_look_down_the_layers():
    modules = _modules()
    up = set()
    for a, b in _imports(modules):
        la, lb = _layer(a), _layer(b)
        if la is not None and lb is not None and lb > la:
            up.add((a, b))
    assert up == ALLOWED_UP, f"imports pointing up the layers: {sorted(up - ALLOWED_UP)}"


def test_every_module_has_a_layer_and_no_file_is_over_600_lines():
    for name, path in _modules().items():
        if name:  # the package's __init__ is the API on top of everything
            assert _layer(name) is not None, f"atss_tf.{name} is in no layer of LAYERS"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)}: {lines} lines"


def test_there_is_no_import_circle():
    edges = _imports(_modules())
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    circles = sorted((a, b) for a, b in edges if reaches(b, a) and not (a == "" or b == ""))
    assert not circles, f"imports on a circle: {circles}"
