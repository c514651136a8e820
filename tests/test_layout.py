"""The suite's layout holds: fixtures in ``conftest.py``, shared helpers in
``tests/helpers/`` imported from there, and no module imports a ``test_*``
module or ``conftest`` (checked on the source with ``ast``, no TensorFlow)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(TESTS.rglob("*.py"))


def _is_forbidden(module: str) -> bool:
    """``conftest`` or a ``test_*`` module of this suite: ``tests.test_x``,
    ``test_x`` or ``.test_x`` (relative), and the same for ``conftest``."""
    parts = module.lstrip(".").split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and (parts[0] == "conftest" or parts[0].startswith("test_"))


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every module an ``import`` or ``from ... import`` names, the names imported
    from a package counted as modules too (``from tests import test_x``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) in ("pytest.fixture", "fixture")


def test_no_module_imports_a_test_module_or_conftest():
    offenders = [
        f"{path.relative_to(TESTS)} imports {module}"
        for path in SOURCES
        for module in _imported_modules(ast.parse(path.read_text(), str(path)))
        if _is_forbidden(module)
    ]
    assert not offenders, "move what is shared into tests/helpers/: " + "; ".join(offenders)


def test_conftest_holds_only_fixtures_and_hooks():
    tree = ast.parse((TESTS / "conftest.py").read_text())
    others = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith("pytest_")
        and not any(_is_fixture(d) for d in getattr(node, "decorator_list", []))
    ]
    assert not others, f"move {others} from conftest.py into tests/helpers/"


def test_helpers_and_scripts_define_no_fixtures():
    shared = [p for p in SOURCES if p.parent.name in ("helpers", "scripts")]
    assert shared, "tests/helpers/ and tests/scripts/ hold the shared modules"
    fixtures = [
        f"{path.relative_to(TESTS)}: {node.name}"
        for path in shared
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and any(_is_fixture(d) for d in node.decorator_list)
    ]
    assert not fixtures, f"fixtures belong in conftest.py: {fixtures}"
