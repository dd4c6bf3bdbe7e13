"""engine/ must never import Qt or the editor (engine/README.md: one-way dependency)."""

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "editor", "qtpy")


def imported_modules(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_engine_module_imports_qt_or_the_editor():
    offenders = [
        f"{p.relative_to(ENGINE.parent)} imports {m}"
        for p in ENGINE.rglob("*.py")
        for m in imported_modules(p)
        if m.split(".")[0] in FORBIDDEN
    ]
    assert not offenders, offenders


def test_importing_every_engine_module_loads_no_qt():
    names = [
        ".".join(p.relative_to(ENGINE.parent).with_suffix("").parts)
        for p in ENGINE.rglob("*.py")
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _engine_imports(path: Path):
    """Engine modules that a module imports, at the top or inside a function."""
    package = ".".join(path.relative_to(ENGINE.parent).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ENGINE.parent).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            yield ".".join(base + ([node.module] if node.module else []))


def test_loading_and_model_modules_import_in_one_direction():
    """models → loaders ← model_writer: the reader needs neither the bundle nor the writer."""
    graph = {
        ".".join(p.relative_to(ENGINE.parent).with_suffix("").parts): set(_engine_imports(p))
        for p in ENGINE.glob("*.py")
    }
    assert "engine.loaders" in graph["engine.models"]
    assert not graph["engine.loaders"] & {"engine.models", "engine.model_writer"}
