"""DESIGN.md's rule: each stage imports only the contract and the stages before it.

The package is the pipeline (DESIGN.md section 3): the contract modules, then one subpackage
per stage. The test reads every module's imports (lazy ones inside functions too), fails on any
import of a later stage, on project modules reached through ``importlib`` (which the check
could not see), and on a subpackage whose docstring does not say what it may import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import nfncompile

#: The contract, in its own internal order, then the stages.
CONTRACT = ["errors", "files", "progress", "spec", "features", "testing"]
STAGES = ["frontend", "backend", "nn", "architectures", "declarative", "zoo", "experiments", "cli"]
ORDER = CONTRACT + STAGES
PACKAGE = Path(nfncompile.__file__).parent


def _stage(path: Path, root: Path = PACKAGE) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def _imported_stages(path: Path, root: Path = PACKAGE) -> set[str]:
    """Top-level nfncompile modules or subpackages imported anywhere in ``path``."""
    here = path.relative_to(root).with_suffix("").parts
    package = here[:-1]  # the package containing this module
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = target[:1] or [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "nfncompile":
                names = node.module.split(".")[1:2] or [a.name for a in node.names]
            else:
                continue
            out.update(names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "nfncompile" and len(parts) > 1:
                    out.add(parts[1])
    return out


def _dynamic_imports(path: Path) -> list[str]:
    """``importlib.import_module`` / ``__import__`` calls on project modules (or on names the
    reader cannot resolve: f-strings and variables)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name not in ("import_module", "__import__") or not node.args:
            continue
        arg = node.args[0]
        package_kw = any(k.arg == "package" for k in node.keywords) or len(node.args) > 1
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if arg.value.startswith((".", "nfncompile")):
                found.append(f"line {node.lineno}: {arg.value!r}")
        elif package_kw:
            found.append(f"line {node.lineno}: relative import of a computed name")
    return found


def _rank(stage: str) -> int:
    return ORDER.index(stage)


def test_every_module_has_a_place_in_the_order():
    modules = {_stage(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert modules <= set(ORDER), f"place these in ORDER: {sorted(modules - set(ORDER))}"
    assert set(STAGES) - {"cli"} <= {p.name for p in PACKAGE.iterdir() if p.is_dir()}


def test_lower_stages_never_import_higher_ones():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = _stage(path)
        if stage == "__init__":
            continue  # the facade: lazy re-exports of every stage's public names
        for dep in _imported_stages(path):
            if dep in ORDER and dep != stage and _rank(dep) > _rank(stage):
                violations.append(f"{path.relative_to(PACKAGE)} imports {dep}")
    assert not violations, "\n".join(violations)


def test_no_project_module_is_imported_through_importlib():
    found = {
        str(p.relative_to(PACKAGE)): d for p in PACKAGE.rglob("*.py") if (d := _dynamic_imports(p))
    }
    assert not found, f"import these with plain import statements: {found}"


def _declared(stage: str) -> set[str]:
    """The stages a subpackage's docstring says it may import (``May import: ...`` line)."""
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text())) or ""
    m = re.search(r"^May import: (.*)$", doc, re.M)
    assert m, f"{stage}/__init__.py: the docstring needs a 'May import: ...' line"
    text = re.sub(r"\([^)]*\)", "", m.group(1)).rstrip(".")
    return {w.strip().removeprefix("the ") for w in text.split(",")}


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "cli"])
def test_each_stage_imports_only_what_its_docstring_declares(stage):
    declared = _declared(stage)
    allowed = {"contract", *STAGES[: STAGES.index(stage)]}
    assert declared <= allowed, f"{stage} declares later stages: {sorted(declared - allowed)}"
    used = set()
    for path in (PACKAGE / stage).rglob("*.py"):
        used |= {d for d in _imported_stages(path) if d in ORDER and d != stage}
    used = {"contract" if d in CONTRACT else d for d in used}
    assert used <= declared, f"{stage} imports undeclared stages: {sorted(used - declared)}"


def test_the_check_sees_lazy_absolute_and_dynamic_imports(tmp_path):
    """The reader must catch imports inside functions, from subpackages and through importlib
    (where violations usually hide)."""
    (tmp_path / "zoo").mkdir()
    probe = tmp_path / "spec.py"
    probe.write_text("def f():\n    from .frontend.spaces import derive_spaces\n")
    nested = tmp_path / "zoo" / "x.py"
    nested.write_text(
        "import importlib\nfrom ..cli import main\nimport nfncompile.experiments\n"
        "def g(n):\n    importlib.import_module(f'.{n}', __package__)\n"
        "    importlib.import_module('nfncompile.cli')\n"
    )
    assert _imported_stages(probe, tmp_path) == {"frontend"}
    assert _imported_stages(nested, tmp_path) == {"cli", "experiments"}
    assert len(_dynamic_imports(nested)) == 2
