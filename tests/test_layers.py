"""The layering of the code, checked by walking every import (module level and inside functions):

* the numerics (``dsclab/``, except the CLI) import neither Prefect nor ``flows``, ``tasks`` or
  ``storage``;
* ``storage`` imports neither Prefect nor ``flows`` or ``tasks``;
* ``tasks`` never import ``flows``;
* ``dsclab/cli.py`` is the one module of ``dsclab`` that sees every layer.
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


def imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
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


@pytest.mark.parametrize("top", sorted(FORBIDDEN))
def test_layers(top):
    found = []
    files = sorted((ROOT / top).rglob("*.py"))
    assert files
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        found += violations(rel, f.read_text())
    assert not found, "\n".join(found)
