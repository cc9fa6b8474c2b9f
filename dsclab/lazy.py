"""Modules imported on first use, so that reading and refusing a spec never imports torch.

``dsclab run`` validates a spec before anything else (issue 29: a refusal in under ~2 s), and the
validation path reaches the registries of the data families, samplers and schedules, whose modules
compute with torch. Importing torch costs ~1.2 s of a ~2.7 s refusal. A module on that path
binds torch through :func:`deferred` instead of ``import torch``::

    from typing import TYPE_CHECKING
    from dsclab.lazy import deferred

    if TYPE_CHECKING:
        import torch
    else:
        torch = deferred("torch", globals())

The first attribute read (``torch.zeros``) imports the module and rebinds the global name to it,
so later reads are plain module attribute lookups; no ``sys.modules`` entry is faked (a lazy
module there is loaded by any other ``import torch``). Such a module must not read a torch
attribute while it is imported (a ``dtype=torch.float64`` default, a ``torch.nn.Module``
subclass): that would import torch at once. In a package's ``__init__``, bind a stand-in under a
name that is not one of the package's submodules (``_numerics = deferred("pkg.numerics",
globals(), "_numerics")``): ``from pkg import numerics`` returns the package's attribute when it
has one, and would hand out the stand-in instead of the module (``tests/test_layers.py`` checks).
``tests/test_spec.py`` checks that refusing a spec leaves torch unimported.
"""
from __future__ import annotations

import importlib
from typing import Any


class _Deferred:
    __slots__ = ("_name", "_namespace", "_binding")

    def __init__(self, name: str, namespace: dict[str, Any], binding: str):
        self._name, self._namespace, self._binding = name, namespace, binding

    def _load(self):
        module = importlib.import_module(self._name)
        if self._namespace.get(self._binding) is self:
            self._namespace[self._binding] = module
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"


def deferred(name: str, namespace: dict[str, Any], binding: str | None = None) -> Any:
    """A stand-in for module ``name``, bound as ``binding`` (default: the last part of the name) in
    ``namespace`` (the caller's ``globals()``): it imports the module on its first attribute read
    and puts the module itself in its place."""
    return _Deferred(name, namespace, binding or name.rpartition(".")[2])
