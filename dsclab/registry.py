"""Registries of variants (distributions, estimators, samplers, metrics, study kinds) that outside
packages extend through Python entry points, without editing this repository.

A :class:`Registry` is a read-only mapping from a name to a variant. It holds this package's
built-in variants and, on first use, loads the entry points of its group: an installed package
declares, in its ``pyproject.toml``::

    [project.entry-points."dsclab.distributions"]
    laplace = "my_package.laplace:laplace"        # name = "module:object"

and ``DISTRIBUTIONS["laplace"]`` is then ``my_package.laplace.laplace``. The groups are:

=========================  ==================================================================
``dsclab.distributions``   data family ``(d, **params) -> distribution`` (``dsclab.distributions``)
``dsclab.estimators``      per-sample loss ``(model, x0, t, z) -> (m,)`` (``dsclab.losses``)
``dsclab.samplers``        ``sample_<name>(score, x, ts, *, noise) -> x`` with its facts declared
                           as attributes ``nfe_per_step`` and ``order`` (``dsclab.samplers``)
``dsclab.metrics``         sample distance ``(x, y, generator) -> float`` with ``long_name`` and
                           ``units`` attributes (``dsclab.metrics``)
``dsclab.studies``         a study kind, an instance of :class:`dsclab.study.StudyKind`
=========================  ==================================================================

A name is resolved once, at the config boundary (spec validation), never inside numerics. A
plugin may not replace a built-in name: that is refused with one line naming both.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A plugin's entry point could not be loaded or clashes with a registered name (one line)."""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> variant: built-ins given at construction plus the entry points of ``group``
    (loaded once, on first lookup; ``check`` validates each loaded object)."""

    def __init__(self, group: str, what: str, builtins: Mapping[str, T] | None = None,
                 check: Callable[[str, object], None] | None = None, lazy: Mapping[str, str] | None = None):
        self.group, self.what, self._check = group, what, check
        self._items: dict[str, T] = dict(builtins or {})
        self._lazy = dict(lazy or {})  # name -> "module:attribute", imported on first lookup
        self._loaded = False
        self._lock = threading.RLock()

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for name, ref in self._lazy.items():
                module, attr = ref.split(":")
                self._items[name] = getattr(importlib.import_module(module), attr)
            for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
                if ep.name in self._items:
                    raise RegistryError(f"entry point {ep.name!r} of {ep.value!r} ({self.group}) clashes with "
                                        f"the registered {self.what} of that name")
                try:
                    obj = ep.load()
                except Exception as e:  # noqa: BLE001 - a broken plugin is named, in one line
                    raise RegistryError(f"cannot load {self.what} {ep.name!r} from {ep.value!r} ({self.group}): "
                                        f"{type(e).__name__}: {e}") from None
                if self._check is not None:
                    self._check(ep.name, obj)
                self._items[ep.name] = obj
            self._loaded = True

    def register(self, name: str, obj: T) -> T:
        """Add a variant at run time (tests, notebooks); refuses a name that is taken."""
        self._load()
        if name in self._items:
            raise RegistryError(f"{self.what} {name!r} is already registered")
        if self._check is not None:
            self._check(name, obj)
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._load()
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r} (known: {self.known()})") from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def known(self) -> str:
        """The registered names, comma-separated (for one-line error messages)."""
        return ", ".join(self)

    def resolve(self, name: str) -> T:
        """The variant called ``name``, or ValueError with one line listing the known names."""
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r} (known: {self.known()})")
        return self._items[name]

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, {list(self)})"
