"""The package's layout rules: no private name crosses a module boundary, no public name shadows a
submodule, and every public name imports."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import online_mas as om

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"online_mas.avalanche": "avalanche"}  # a module of an optional extra -> what it imports


def _private_imports(root: Path, package: str) -> list[str]:
    """``from online_mas.x import _name`` or an import of a ``_module`` of another package, in the
    library's own files."""
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("online_mas"):
                parts = node.module.split(".")
                private_module = any(p.startswith("_") for p in parts)
                names = [a.name for a in node.names if a.name.startswith("_")]
                if private_module or names:
                    bad.append(f"{path.relative_to(root)}:{node.lineno} {node.module} {names}")
            elif isinstance(node, ast.Import):
                bad += [f"{path.relative_to(root)}:{node.lineno} {a.name}" for a in node.names
                        if a.name.startswith("online_mas")
                        and any(p.startswith("_") for p in a.name.split("."))]
    return bad


def test_no_private_name_is_imported_across_library_modules() -> None:
    assert _private_imports(ROOT, "online_mas") == []
    assert _private_imports(ROOT, "scripts") == []


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    (tmp_path / "online_mas").mkdir()
    (tmp_path / "online_mas" / "a.py").write_text("from online_mas.estimators.exact import _hidden\n")
    assert len(_private_imports(tmp_path, "online_mas")) == 1


def test_no_public_name_shadows_a_submodule() -> None:
    experiment = importlib.import_module("online_mas.experiment")
    for package in (om, om.estimators, om.detectors, experiment):
        for info in pkgutil.iter_modules(package.__path__):
            name = f"{package.__name__}.{info.name}"
            if name in EXTRAS and importlib.util.find_spec(EXTRAS[name]) is None:
                continue  # its extra is not installed
            module = importlib.import_module(name)
            value = getattr(package, info.name, module)
            assert value is module, f"{package.__name__}.{info.name} is a {type(value).__name__}"


def test_every_public_name_imports_and_is_documented() -> None:
    for name in om.__all__:
        value = getattr(om, name)
        if (callable(value) or isinstance(value, type(om))) and name != "OutputFn":  # a type alias
            assert value.__doc__, f"om.{name} has no docstring"


def test_the_package_does_not_import_an_optional_extra() -> None:
    code = "import sys, online_mas; print(sorted({'avalanche', 'river'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
