"""DESIGN.md's rule: lower pipeline stages never import higher ones.

The order below is the pipeline (DESIGN.md section 3) with the project's supporting modules
placed where they sit; the test reads every ``nfncompile`` module's imports (lazy ones inside
functions too) and fails on any import of a module that comes later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nfncompile

ORDER = [
    "errors",
    "files",
    "architectures",
    "fxtrace",
    "graph",
    "spaces",
    "spec",
    "features",
    "verification",
    "frontend",
    "drawing",
    "basis",
    "plan",
    "codegen",
    "layers",
    "pointwise",
    "stats",
    "testing",
    "config",
    "builder",
    "data",
    "zoo",
    "distributed",
    "train",
    "tasks",
    "cli",
]
PACKAGE = Path(nfncompile.__file__).parent


def _stage(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_stages(path: Path, root: Path = PACKAGE) -> set[str]:
    """Top-level nfncompile modules imported anywhere in ``path`` (a file under ``root``)."""
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


def test_every_module_has_a_place_in_the_order():
    modules = {_stage(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert modules <= set(ORDER), f"place these modules in ORDER: {sorted(modules - set(ORDER))}"


def test_lower_stages_never_import_higher_ones():
    rank = {name: i for i, name in enumerate(ORDER)}
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = _stage(path)
        if stage == "__init__":
            continue
        for dep in _imported_stages(path):
            if dep in rank and dep != stage and rank[dep] > rank[stage]:
                violations.append(f"{path.relative_to(PACKAGE)} imports {dep}")
    assert not violations, "\n".join(violations)


def test_the_check_sees_lazy_and_absolute_imports(tmp_path):
    """The reader must catch imports inside functions and from subpackages (where
    violations usually hide)."""
    (tmp_path / "tasks").mkdir()
    probe = tmp_path / "graph.py"
    probe.write_text("def f():\n    from .spaces import derive_spaces\n")
    nested = tmp_path / "tasks" / "x.py"
    nested.write_text("from ..cli import main\nimport nfncompile.zoo\n")
    assert _imported_stages(probe, tmp_path) == {"spaces"}
    assert _imported_stages(nested, tmp_path) == {"cli", "zoo"}
