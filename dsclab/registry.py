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

Facts about a variant are attributes set where it is defined, with :func:`declare` (as torchsde
declares them on a scheme); :meth:`Registry.facts` is the read-only mapping name -> one fact
(``dsclab.samplers.NFE_PER_STEP``). Each registry checks every variant it holds (built-in or
plugin) with its ``check`` function, e.g. :class:`Needs`: a plugin sampler that does not declare
``nfe_per_step`` is refused.

A name is resolved once, at the config boundary (spec validation), never inside numerics. A
plugin may not replace a built-in name, nor two plugins share one: that is refused with one line
naming both. A plugin that cannot be imported is refused with one line naming it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F")


class RegistryError(ValueError):
    """A plugin's entry point could not be loaded or clashes with a registered name (one line)."""


def declare(**facts: Any) -> Callable[[F], F]:
    """Decorator setting facts as attributes of a variant where it is defined::

        @declare(nfe_per_step=2, order=(1.0, 2.0), levy_area=False)
        def sample_srk(score, x, ts, *, noise): ...
    """
    def mark(obj: F) -> F:
        for k, v in facts.items():
            setattr(obj, k, v)
        return obj
    return mark


def origin(obj: object) -> str:
    """Where a variant is defined, ``module:qualified name`` (for one-line messages)."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}"


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def positive_pair(v) -> bool:
    return len(v) == 2 and all(isinstance(o, (int, float)) and not isinstance(o, bool) and o > 0 for o in v)


def text(v) -> bool:
    return isinstance(v, str)


def nonempty_text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


class Needs:
    """A registry check: the variant is callable and declares each fact, ``attribute=(test,
    description)``; a missing or invalid fact is a RegistryError with one line. (A class, with
    module-level tests, so that a registry pickles.)"""

    def __init__(self, what: str, **facts: tuple[Callable[[Any], bool], str]):
        self.what, self.facts = what, facts

    def __call__(self, name: str, obj: object) -> None:
        what = self.what
        if not callable(obj):
            raise RegistryError(f"{what} {name!r} ({origin(obj)}) is a {type(obj).__name__}, not callable")
        for attr, (ok, description) in self.facts.items():
            if not hasattr(obj, attr):
                raise RegistryError(f"{what} {name!r} ({origin(obj)}) does not declare {attr} ({description}); "
                                    f"declare it with @dsclab.registry.declare({attr}=...)")
            value = getattr(obj, attr)
            try:
                good = bool(ok(value))
            except Exception:  # noqa: BLE001 - a value the test cannot read is invalid
                good = False
            if not good:
                raise RegistryError(f"{what} {name!r} ({origin(obj)}) declares {attr}={value!r}, "
                                    f"not {description}")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> variant: built-ins given at construction plus the entry points of ``group``
    (loaded once, on first lookup; ``check`` validates each variant, built-ins included).

    ``builtin_names`` are this package's own names in their order (``builtins`` then ``lazy``):
    a study whose store layout lists every variant (one variable per metric, say) uses those, so
    that an installed plugin does not change its layout."""

    def __init__(self, group: str, what: str, builtins: Mapping[str, T] | None = None,
                 check: Callable[[str, object], None] | None = None, lazy: Mapping[str, str] | None = None):
        self.group, self.what, self._check = group, what, check
        self._builtins: dict[str, T] = dict(builtins or {})
        self._lazy = dict(lazy or {})  # name -> "module:attribute", imported on first lookup
        self.builtin_names: tuple[str, ...] = tuple(self._builtins) + tuple(self._lazy)
        self._items: dict[str, T] = {}
        self._loaded = self._loading = False
        self._lock = threading.RLock()

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self._loading:
                raise RegistryError(f"the {self.what} registry ({self.group}) was looked up while its plugins "
                                    f"load: a plugin module must not look it up when imported")
            self._loading = True
            try:
                self._items = self._collect()
                self._loaded = True
            finally:
                self._loading = False

    def _collect(self) -> dict[str, T]:
        """Built-ins, lazy built-ins and entry points, each checked; nothing is kept on failure."""
        items: dict[str, T] = dict(self._builtins)
        for name, ref in self._lazy.items():
            module, attr = ref.split(":")
            items[name] = getattr(importlib.import_module(module), attr)
        where = {name: origin(obj) for name, obj in items.items()}
        for ep in sorted(importlib.metadata.entry_points(group=self.group), key=lambda e: (e.name, e.value)):
            if ep.name in items:
                raise RegistryError(f"entry point {ep.name!r} = {ep.value!r} ({self.group}) clashes with the "
                                    f"registered {self.what} {ep.name!r} of {where[ep.name]}")
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin is named, in one line
                msg = (str(e).strip().splitlines() or [""])[0]
                raise RegistryError(f"cannot load {self.what} {ep.name!r} from {ep.value!r} ({self.group}): "
                                    f"{type(e).__name__}: {msg}") from None
            items[ep.name], where[ep.name] = obj, ep.value
        if self._check is not None:
            for name, obj in items.items():
                self._check(name, obj)
        return items

    def __getstate__(self) -> dict:  # picklable (Dask ships functions that refer to a registry)
        self._load()
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def register(self, name: str, obj: T) -> T:
        """Add a variant at run time (tests, notebooks); refuses a name that is taken."""
        self._load()
        if name in self._items:
            raise RegistryError(f"{self.what} {name!r} is already registered ({origin(self._items[name])})")
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

    def facts(self, attr: str) -> "Facts":
        """The read-only mapping name -> ``getattr(variant, attr)`` over this registry (live: a
        variant registered later is in it)."""
        return Facts(self, attr)

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, {list(self)})"


class Facts(Mapping[str, Any]):
    """One declared fact of every variant of a registry, by name (a read-only view)."""

    def __init__(self, registry: Registry, attr: str):
        self.registry, self.attr = registry, attr

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self.registry[name], self.attr)
        except AttributeError:
            raise KeyError(f"{self.registry.what} {name!r} does not declare {self.attr}") from None

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, v in self.registry.items() if hasattr(v, self.attr)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {v!r}' for k, v in self.items())}}}"
