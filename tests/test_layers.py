"""The layering of the code, checked by walking every import (module level and inside functions):

* the numerics (``dsclab/``, except the CLI) import neither Prefect nor ``flows``, ``tasks`` or
  ``storage``;
* ``storage`` imports neither Prefect nor ``flows`` or ``tasks``;
* ``tasks`` never import ``flows``;
* ``dsclab/cli.py`` is the one module of ``dsclab`` that sees every layer;

and the layout of the study kinds (``dsclab/studies/<kind>/``):

* every built-in kind is one package with the same modules (:data:`KIND_MODULES`) and its small
  preset, plus whatever science only it uses;
* no kind imports another kind;
* a module at the top of ``dsclab/`` that kinds import serves at least two kinds or the layers
  around them (science that serves one kind lives in that kind's package).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package folder -> import prefixes it must not use
FORBIDDEN = {
    "dsclab": ("prefect", "prefect_dask", "flows", "tasks", "storage"),
    "storage": ("prefect", "prefect_dask", "flows", "tasks"),
    "tasks": ("flows",),
}
EXEMPT = {"dsclab/cli.py"}  # the command line knows every layer


KIND_MODULES = ("__init__.py", "spec.py", "layout.py", "numerics.py", "report.py", "plot.py", "small.yaml")
STUDIES = ROOT / "dsclab" / "studies"


def deferred_module(node: ast.AST) -> str | None:
    """The module of a ``deferred("module", ...)`` call (``dsclab.lazy``: an import on first use,
    held to the same layering as an import statement), else None."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        f = node.func
        if (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None) == "deferred":
            return node.args[0].value
    return None


def imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``, deferred ones included."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif mod := deferred_module(node):
            out.append((node.lineno, mod))
    return out


def violations(rel: str, source: str) -> list[str]:
    top = rel.split("/", 1)[0]
    if rel in EXEMPT or top not in FORBIDDEN:
        return []
    bad = FORBIDDEN[top]
    return [f"{rel}:{line} imports {mod}" for line, mod in imports(source)
            if any(mod == b or mod.startswith(b + ".") for b in bad)]


def test_the_checker_finds_a_violation():
    src = "import numpy\n\ndef f():\n    from prefect import task\n    import storage.files\n"
    assert violations("dsclab/x.py", src) == ["dsclab/x.py:4 imports prefect", "dsclab/x.py:5 imports storage.files"]
    assert violations("tasks/x.py", "from flows.runners import RunnerSpec\nimport storage\n") == [
        "tasks/x.py:1 imports flows.runners"]
    assert violations("dsclab/cli.py", "import flows\n") == []
    assert violations("dsclab/x.py", "import storagebox\n") == []  # a prefix of a name is not the package
    assert violations("dsclab/x.py", "flows = deferred('flows.study', globals())\n") == [
        "dsclab/x.py:1 imports flows.study"]


@pytest.mark.parametrize("top", sorted(FORBIDDEN))
def test_layers(top):
    found = []
    files = sorted((ROOT / top).rglob("*.py"))
    assert files
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        found += violations(rel, f.read_text())
    assert not found, "\n".join(found)


def kind_packages() -> list[Path]:
    return sorted(p for p in STUDIES.iterdir() if p.is_dir() and p.name != "__pycache__")


def test_every_builtin_kind_is_one_package_of_the_same_modules():
    from dsclab.study import BUILTIN

    assert sorted(p.name for p in kind_packages()) == sorted(BUILTIN)
    for pkg in kind_packages():
        missing = [m for m in KIND_MODULES if not (pkg / m).is_file()]
        assert not missing, f"dsclab/studies/{pkg.name} lacks {', '.join(missing)}"


def importers() -> dict[str, set[str]]:
    """Top-level module of dsclab (``dsclab.x``) -> the places importing it: a kind's name, or the
    path of a module outside the kinds (flows, tasks, storage and the rest of dsclab)."""
    out: dict[str, set[str]] = {}
    for top in ("dsclab", "flows", "tasks", "storage"):
        for f in sorted((ROOT / top).rglob("*.py")):
            rel = f.relative_to(ROOT)
            where = rel.parts[2] if rel.parts[:2] == ("dsclab", "studies") and len(rel.parts) > 3 else rel.as_posix()
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                             if node.module == "dsclab" else [])
                elif mod := deferred_module(node):
                    names = [mod]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "dsclab" and len(parts) > 1 and parts[1] != "studies":
                        mod = f"dsclab.{parts[1]}"
                        if not rel.as_posix().startswith(mod.replace(".", "/")):  # not itself
                            out.setdefault(mod, set()).add(where)
    return out


def test_kinds_import_no_other_kind():
    found = []
    for pkg in kind_packages():
        for f in sorted(pkg.rglob("*.py")):
            for line, mod in imports(f.read_text()):
                parts = mod.split(".")
                if parts[:2] == ["dsclab", "studies"] and len(parts) > 2 and parts[2] != pkg.name:
                    found.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not found, "\n".join(found)


def test_science_of_one_kind_lives_in_its_package():
    kinds = {p.name for p in kind_packages()}
    alone = {mod: users for mod, users in importers().items() if len(users) == 1 and users <= kinds}
    assert not alone, "; ".join(f"{m} serves only the study kind {next(iter(u))}: move it into that kind's package"
                                for m, u in sorted(alone.items()))



def test_no_package_binds_a_deferred_module_under_a_submodules_name():
    """``from package import submodule`` returns the package's attribute when it has one: a
    ``deferred`` stand-in bound in a package's ``__init__`` under one of its submodules' names would
    be handed out instead of the module (its attributes then cannot be set, as tests'
    monkeypatching does). Bind it under another name (``_numerics``)."""
    found = []
    for init in sorted([*(ROOT / "dsclab").rglob("__init__.py"), *(ROOT / "examples").rglob("__init__.py")]):
        subs = {p.stem for p in init.parent.glob("*.py")} | {p.name for p in init.parent.iterdir() if p.is_dir()}
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.Assign) and deferred_module(node.value):
                found += [f"{init.relative_to(ROOT)}:{node.lineno} binds {t.id}" for t in node.targets
                          if isinstance(t, ast.Name) and t.id in subs]
    assert not found, "\n".join(found)
