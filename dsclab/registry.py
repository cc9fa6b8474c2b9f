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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Ref:
    """A registry entry not imported yet: ``where`` is its ``module:attr``, ``load()`` imports it;
    ``plugin`` tells an entry point from a lazy built-in."""
    where: str
    load: Callable[[], Any]
    plugin: bool


def _lazy_ref(ref: str) -> _Ref:
    module, attr = ref.split(":")
    return _Ref(ref, lambda: getattr(importlib.import_module(module), attr), plugin=False)


def _where(source: Any) -> str:
    """Where a registry's entry is defined, ``module:attr``."""
    return source.where if isinstance(source, _Ref) else origin(source)


class Registry(Mapping[str, T], Generic[T]):
    """Name -> variant: built-ins given at construction (objects, or ``lazy`` ``"module:attribute"``
    references) plus the entry points of ``group``; ``check`` validates each variant, built-ins
    included.

    The *names* are known without importing anything: membership, iteration and ``len`` read the
    built-in names and the entry points' metadata (a clash between them is refused there, in one
    line, at every lookup until it is mended). A variant is imported and checked when it is first looked up by
    name, and kept; looking up an unknown name, iterating the values or the facts loads every
    variant (a plugin that cannot be imported is then refused, in one line). So validating a spec
    that names a study kind imports that kind only, and never a variant it does not use.

    ``builtin_names`` are this package's own names in their order (``builtins`` then ``lazy``):
    a study whose store layout lists every variant (one variable per metric, say) uses those, so
    that an installed plugin does not change its layout."""

    def __init__(self, group: str, what: str, builtins: Mapping[str, T] | None = None,
                 check: Callable[[str, object], None] | None = None, lazy: Mapping[str, str] | None = None):
        self.group, self.what, self._check = group, what, check
        self._builtins: dict[str, T] = dict(builtins or {})
        self._lazy = dict(lazy or {})  # name -> "module:attribute", imported on first lookup
        self.builtin_names: tuple[str, ...] = tuple(self._builtins) + tuple(self._lazy)
        self._sources: dict[str, Any] | None = None  # name -> its object, lazy reference or entry point
        self._items: dict[str, T] = {}  # the variants looked up so far, checked
        self._loading: set[str] = set()
        self._lock = threading.RLock()

    def _names(self) -> dict[str, Any]:
        """Every name and where its variant comes from (nothing imported); refuses clashes."""
        if self._sources is not None:
            return self._sources
        with self._lock:
            if self._sources is not None:
                return self._sources
            sources: dict[str, Any] = {**self._builtins, **{k: _lazy_ref(v) for k, v in self._lazy.items()}}
            for ep in sorted(importlib.metadata.entry_points(group=self.group), key=lambda e: (e.name, e.value)):
                if ep.name in sources:
                    raise RegistryError(f"entry point {ep.name!r} = {ep.value!r} ({self.group}) clashes with the "
                                        f"registered {self.what} {ep.name!r} of {_where(sources[ep.name])}")
                sources[ep.name] = _Ref(ep.value, ep.load, plugin=True)
            self._sources = sources
            return sources

    def _where(self, name: str) -> str:
        return _where(self._items.get(name, self._names()[name]))

    def _get(self, name: str) -> T:
        """The variant ``name`` (a known name), imported and checked on first lookup."""
        try:
            return self._items[name]
        except KeyError:
            pass
        with self._lock:
            if name in self._items:
                return self._items[name]
            if name in self._loading:
                raise RegistryError(f"the {self.what} {name!r} ({self.group}) was looked up while it loads: "
                                    f"a module must not look up its own variant when imported")
            source = self._names()[name]
            self._loading.add(name)
            try:
                if not isinstance(source, _Ref):
                    obj = source
                elif source.plugin:
                    try:
                        obj = source.load()
                    except Exception as e:  # noqa: BLE001 - a broken plugin is named, in one line
                        msg = (str(e).strip().splitlines() or [""])[0]
                        raise RegistryError(f"cannot load {self.what} {name!r} from {source.where!r} ({self.group}): "
                                            f"{type(e).__name__}: {msg}") from None
                else:
                    obj = source.load()
                if self._check is not None:
                    self._check(name, obj)
            finally:
                self._loading.discard(name)
            self._items[name] = obj
            return obj

    def _load(self) -> None:
        """Every variant, imported and checked (the first failure is raised; nothing failed is kept)."""
        for name in self._names():
            self._get(name)

    def __getstate__(self) -> dict:  # picklable (Dask ships functions that refer to a registry)
        self._load()
        state = dict(self.__dict__)
        del state["_lock"]
        state["_sources"] = dict(self._items)  # every variant is loaded: no entry point objects to pickle
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def register(self, name: str, obj: T) -> T:
        """Add a variant at run time (tests, notebooks); refuses a name that is taken."""
        sources = self._names()
        if name in sources:
            raise RegistryError(f"{self.what} {name!r} is already registered ({self._where(name)})")
        if self._check is not None:
            self._check(name, obj)
        with self._lock:
            sources[name] = obj
            self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        with self._lock:
            self._names().pop(name, None)
            self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        if name not in self._names():
            self._load()  # an unknown name: a plugin that cannot be loaded is reported first
            raise KeyError(f"unknown {self.what} {name!r} (known: {self.known()})")
        return self._get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names()))

    def __len__(self) -> int:
        return len(self._names())

    def known(self) -> str:
        """The registered names, comma-separated (for one-line error messages)."""
        return ", ".join(self)

    def resolve(self, name: str) -> T:
        """The variant called ``name``, or ValueError with one line listing the known names."""
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r} (known: {self.known()})")
        return self._get(name)

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
