"""Plugin discovery, the process-wide registry of algorithms and plugins, and the per-run manager.

Installed distributions expose one module in the entry-point group
``sparsecore``; that module implements ``sparsecore_register_algorithms`` and/or
``sparsecore_register_plugins``. Loading them only makes names *available*.
Each :class:`~sparsecore.Sparsifier` builds a fresh :class:`pluggy.PluginManager`
holding the built-in defaults, the one chosen algorithm and the user's plugins.

Set ``SPARSECORE_DISABLE_PLUGIN_AUTOLOAD`` to ``1``, ``true``, ``yes`` or ``on``
(any case) to skip entry-point loading (``0``, ``false``, ``no``, ``off`` or
empty keep it on; anything else is an error); plugins passed as objects still
work, and the core's built-in algorithms are always registered.

An entry point that fails to load, whatever it raises (``sys.exit()`` at
import included, :class:`KeyboardInterrupt` excepted), registers nothing and is
listed by ``sparsecore plugins``; the others load.

Algorithm and plugin names compare case-insensitively; a name that two
distributions register is qualified with the distribution
(``"dist-name:algo-name"``) to pick one.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from sparsecore import hookspecs
from sparsecore.__about__ import __version__
from sparsecore.errors import AmbiguousNameError, ConfigurationError, HookResultError, UnknownAlgorithmError

#: The entry-point group plugin distributions declare their module in.
ENTRY_POINT_GROUP = "sparsecore"
#: The environment variable that turns entry-point loading off.
AUTOLOAD_ENV = "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD"
#: Values of :data:`AUTOLOAD_ENV` (stripped, any case) that turn entry-point loading off.
AUTOLOAD_OFF_VALUES = ("1", "true", "yes", "on")
#: Values of :data:`AUTOLOAD_ENV` (stripped, any case) that leave entry-point loading on.
AUTOLOAD_ON_VALUES = ("0", "false", "no", "off", "")


def _hookspec_options() -> dict[str, dict[str, Any]]:
    """Name -> pluggy options of every hook specification in :mod:`sparsecore.hookspecs`, in source order."""
    reader = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    found = {}
    for name in vars(hookspecs):
        opts = reader.parse_hookspec_opts(hookspecs, name)
        if opts is not None:
            found[name] = dict(opts)
    return found


_SPEC_OPTIONS = _hookspec_options()
#: Every hook specified in :mod:`sparsecore.hookspecs`, in source order.
HOOK_NAMES: tuple[str, ...] = tuple(_SPEC_OPTIONS)
#: The hooks of entry-point modules, called once when the registry loads.
REGISTRATION_HOOKS = ("sparsecore_register_algorithms", "sparsecore_register_plugins")
#: Hooks of earlier releases and what replaced them (named in the error for a plugin that still implements one).
RETIRED_HOOKS = {
    "engine_defaults": "an attribute of the algorithm now (engine_defaults = {...}; see sparsecore.Algorithm)",
    "masking_policy": "an attribute of the algorithm now (masking_policy = MaskingPolicy(...); "
                      "see sparsecore.Algorithm)",
    "prune_counts": "replaced by plan_update, which returns a sparsecore.UpdatePlan",
    "on_remove": "retired: the engine undoes what it installs; an algorithm sets sparsifier.lr_factor instead of "
                 "hooking the optimizer",
}
#: The hooks a run's plugins implement.
RUN_HOOKS = tuple(h for h in HOOK_NAMES if h not in REGISTRATION_HOOKS)
#: The run hooks whose first non-``None`` answer is the result (:meth:`RunManager.call_first`).
FIRST_RESULT_HOOKS: frozenset[str] = frozenset(
    h for h in RUN_HOOKS if _SPEC_OPTIONS[h].get("firstresult"))


@dataclass(frozen=True)
class Registration:
    """One registered algorithm or plugin.

    Attributes:
        name: public name (``"sparse-momentum"``).
        kind: ``"algorithm"`` or ``"plugin"``.
        factory: ``factory(**options)`` returns the plugin object.
        distribution: the distribution that registered it (``"sparsecore"`` for built-ins).
        version: that distribution's version.
        module: the module that called ``register``.
    """

    name: str
    kind: str
    factory: Callable[..., Any]
    distribution: str
    version: str
    module: str

    def hooks(self) -> list[str] | None:
        """Names of the run hooks the factory's plugin objects implement.

        ``None`` when that is only known once the plugin is built: the factory
        is not a class and cannot be called without options (see
        :func:`factory_hooks` for the reason).
        """
        return factory_hooks(self.factory)[0]


@dataclass
class Distribution:
    """A distribution that contributes to the registry (for ``sparsecore plugins``).

    Attributes:
        name: the distribution's name (``"sparse-momentum"``).
        version: its installed version.
        module: its entry-point module (``"package.module"``).
        registrations: the algorithms and plugins it registered.
    """

    name: str
    version: str
    module: str
    registrations: list[Registration] = field(default_factory=list)


@dataclass(frozen=True)
class LoadFailure:
    """An entry point of group ``sparsecore`` that failed to load (for ``sparsecore plugins``).

    Attributes:
        distribution: the distribution that declared the entry point.
        version: that distribution's version.
        entry_point: the entry point's value (``"package.module"``).
        error: what went wrong (the exception's ``repr``).
    """

    distribution: str
    version: str
    entry_point: str
    error: str

    @property
    def message(self) -> str:
        """One line naming the distribution, the entry point and the error."""
        return f"{self.distribution} {self.version}: entry point {self.entry_point!r} failed to load: {self.error}"


def autoload_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether :data:`AUTOLOAD_ENV` turns entry-point loading off (in ``environ``, default ``os.environ``).

    Raises:
        ConfigurationError: the variable holds a value that is neither on nor off.
    """
    value = (os.environ if environ is None else environ).get(AUTOLOAD_ENV, "")
    setting = value.strip().lower()
    if setting in AUTOLOAD_OFF_VALUES:
        return True
    if setting in AUTOLOAD_ON_VALUES:
        return False
    raise ConfigurationError(
        f"{AUTOLOAD_ENV}={value!r} is not understood: use {', '.join(AUTOLOAD_OFF_VALUES)} to disable "
        f"entry-point loading, or {', '.join(v for v in AUTOLOAD_ON_VALUES if v)} or empty to enable it")


def _entry_point_distribution(ep: Any) -> tuple[str, str]:
    """The name and version of the distribution that declares an entry point (its own name when unknown)."""
    try:
        dist = ep.dist
        name, version = dist.metadata["Name"], dist.version
    except Exception:  # no or broken metadata: still name the entry point
        return str(getattr(ep, "name", ep)), "unknown"
    return str(name or ep.name), str(version or "unknown")


def factory_hooks(factory: Callable[..., Any]) -> tuple[list[str] | None, str]:
    """The hooks a registration's factory yields, and why they are unknown when they are.

    A class is inspected directly. Any other callable (``register(name,
    make_plugin)``) is called with no arguments and the object it returns is
    inspected; when it needs options, or building it fails, the hooks are known
    only once built.

    Returns:
        ``(sorted hook names, "")``, or ``(None, reason)``.
    """
    if isinstance(factory, type):
        return implemented_hooks(factory), ""
    label = getattr(factory, "__qualname__", None) or repr(factory)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        required = [n for n, p in sig.parameters.items()
                    if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if required:
            return None, f"factory {label} needs option(s) {', '.join(required)}"
    try:
        plugin = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # listing plugins must not fail (nor exit) because one cannot be built bare
        return None, f"factory {label}() failed: {exc!r}"
    return implemented_hooks(plugin), ""


def implemented_hooks(obj: Any) -> list[str]:
    """Names of hooks implemented (marked with :data:`sparsecore.hookimpl`) by a plugin object or class."""
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    found = []
    for name in dir(obj):
        if name.startswith("__"):
            continue
        try:
            attr = inspect.getattr_static(obj, name)
        except AttributeError:
            continue
        fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if hasattr(fn, marker):
            found.append(name)
    return sorted(found)


class Registry:
    """Process-wide registry of algorithms and non-algorithm plugins by name.

    Look names up with :meth:`algorithm` and :meth:`plugin`: they refuse a name
    that two distributions registered unless it is qualified
    (``"dist-name:algo-name"``).

    Attributes:
        algorithms: algorithm name -> its registration (for a name several
            distributions registered, the first one loaded; see :attr:`ambiguous`).
        plugins: non-algorithm plugin name -> its registration (likewise).
        ambiguous: ``(kind, name)`` -> the registrations of a name that more than
            one distribution registered, in load order.
        distributions: distribution name -> what it registered.
        load_failures: the entry points that failed to load, in load order.
        autoload: whether the last load read the entry points (see :data:`AUTOLOAD_ENV`).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._forget()

    def _forget(self) -> None:
        self._loaded = False
        self._loading = False
        self.autoload = True
        self.algorithms: dict[str, Registration] = {}
        self.plugins: dict[str, Registration] = {}
        self.ambiguous: dict[tuple[str, str], list[Registration]] = {}
        self.distributions: dict[str, Distribution] = {}
        self.load_failures: list[LoadFailure] = []

    @property
    def load_errors(self) -> list[str]:
        """One message per entry point that failed to load (:attr:`LoadFailure.message`)."""
        return [failure.message for failure in self.load_failures]

    # -- loading -------------------------------------------------------
    def _collect(self, module: Any, dist_name: str, dist_version: str) -> list[Registration]:
        """Run a module's registration hooks; return what it registered, recording nothing yet."""
        manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        manager.add_hookspecs(hookspecs)
        mod_name = getattr(module, "__name__", repr(module))
        manager.register(module, name=f"{dist_name}:{mod_name}")
        manager.check_pending()
        collected: list[Registration] = []
        open_for = {"algorithm": False, "plugin": False}

        def make_register(kind: str, hook_name: str) -> Callable[..., None]:
            def register(name: str, factory: Callable[..., Any]) -> None:
                if not open_for[kind]:
                    raise ConfigurationError(f"{dist_name}: register() of {hook_name} called after that hook returned")
                _check_registration(kind, name, factory, dist_name)
                # registered again: replaced
                collected[:] = [r for r in collected if (r.kind, _name_key(r.name)) != (kind, _name_key(name))]
                collected.append(Registration(name, kind, factory, dist_name, dist_version, mod_name))
            return register

        for kind, hook_name in (("algorithm", "sparsecore_register_algorithms"),
                                ("plugin", "sparsecore_register_plugins")):
            open_for[kind] = True
            try:
                getattr(manager.hook, hook_name)(register=make_register(kind, hook_name))
            finally:
                open_for[kind] = False
        return collected

    def _record(self, registrations: list[Registration], dist_name: str, dist_version: str, module: str) -> None:
        """Add one module's registrations to the tables and to its distribution's record."""
        dist = next((d for d in self.distributions.values() if _same_distribution(d.name, dist_name)), None)
        if dist is None:
            dist = self.distributions[dist_name] = Distribution(dist_name, dist_version, module)
        for reg in registrations:
            replaced = self._add(reg)
            if replaced is not None and replaced in dist.registrations:
                dist.registrations.remove(replaced)
            dist.registrations.append(reg)

    def _add(self, reg: Registration) -> Registration | None:
        """Add a registration; a name another distribution already holds becomes ambiguous.

        The table keeps, for an ambiguous name, the registration loaded first.

        Returns:
            The registration of the same distribution and name that ``reg`` replaces, if any.
        """
        table = self._table(reg.kind)
        key = (reg.kind, _name_key(reg.name))
        first = _find(table, reg.name)
        holders = self.ambiguous.get(key) or ([first] if first is not None else [])
        replaced = next((r for r in holders if _same_distribution(r.distribution, reg.distribution)), None)
        group = [reg if r is replaced else r for r in holders] if replaced is not None else [*holders, reg]
        if first is not None:
            del table[first.name]
        table[group[0].name] = group[0]
        if len(group) > 1:
            self.ambiguous[key] = group
        return replaced

    def _register_module(self, module: Any, dist_name: str, dist_version: str) -> None:
        """Run a module's registration hooks and record what it registered: all of it, or (raising) nothing."""
        registrations = self._collect(module, dist_name, dist_version)
        self._record(registrations, dist_name, dist_version, getattr(module, "__name__", repr(module)))

    def _table(self, kind: str) -> dict[str, Registration]:
        return self.algorithms if kind == "algorithm" else self.plugins

    def _load_entry_point(self, ep: Any) -> LoadFailure | None:
        """Import one entry point and record its registrations; a failure is returned, not raised.

        Any failure is contained (``sys.exit()`` at import included) except
        :class:`KeyboardInterrupt`; a failing entry point leaves no registration behind.
        """
        dist_name, dist_version = _entry_point_distribution(ep)
        if _same_distribution(dist_name, "sparsecore"):  # the built-ins are registered directly
            return None
        try:
            self._register_module(ep.load(), dist_name, dist_version)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin must not take the others down
            return LoadFailure(dist_name, dist_version, str(getattr(ep, "value", ep)), repr(exc))
        return None

    def load(self) -> None:
        """Register the built-ins and (unless disabled) every entry point of group ``sparsecore``.

        Idempotent; a call made while loading (by a plugin being imported)
        returns at once. An entry point that fails to load, whatever it raises
        (``sys.exit()`` included), is recorded in :attr:`load_failures` with a
        :class:`RuntimeWarning` and registers nothing; the others load. Only
        :class:`KeyboardInterrupt` stops loading; it leaves the registry
        unloaded.

        Raises:
            ConfigurationError: :data:`AUTOLOAD_ENV` holds a value that is neither on nor off.
        """
        with self._lock:
            if self._loaded or self._loading:
                return
            autoload = not autoload_disabled()
            self._loading = True
            try:
                from sparsecore import algorithms

                self.autoload = autoload
                self._register_module(algorithms, "sparsecore", __version__)
                if autoload:
                    from importlib.metadata import entry_points

                    for ep in entry_points(group=ENTRY_POINT_GROUP):
                        failure = self._load_entry_point(ep)
                        if failure is not None:
                            self.load_failures.append(failure)
            except BaseException:
                self._forget()  # nothing half-loaded stays; the next lookup loads again
                raise
            self._loading = False
            self._loaded = True
            failures = list(self.load_failures)
        for failure in failures:
            warnings.warn(f"sparsecore plugin {failure.message}", RuntimeWarning, stacklevel=2)

    def reset(self) -> None:
        """Forget everything loaded and registered; the next lookup loads again.

        Tests use this with the environment switch.
        """
        with self._lock:
            self._forget()

    # -- registering in code ---------------------------------------------
    def _register_code(self, kind: str, name: str, factory: Callable[..., Any], distribution: str,
                       version: str) -> Registration:
        self.load()
        _check_registration(kind, name, factory, distribution)
        with self._lock:
            table = self._table(kind)
            holders = self.ambiguous.get((kind, _name_key(name))) or [r for r in [_find(table, name)] if r is not None]
            others = [r.distribution for r in holders if not _same_distribution(r.distribution, distribution)]
            if others:
                raise ConfigurationError(f"{kind} {name!r} is already registered by "
                                         f"{' and '.join(map(repr, others))}")
            reg = Registration(name, kind, factory, distribution, version, getattr(factory, "__module__", ""))
            self._add(reg)
            return reg

    def register_algorithm(self, name: str, factory: Callable[..., Any], distribution: str = "<code>",
                           version: str = "") -> Registration:
        """Register an algorithm from code (tests, notebooks). Returns the registration.

        Raises:
            ConfigurationError: another distribution already registered ``name``, or
                ``name`` is not a non-empty string without ``":"``.
        """
        return self._register_code("algorithm", name, factory, distribution, version)

    def register_plugin(self, name: str, factory: Callable[..., Any], distribution: str = "<code>",
                        version: str = "") -> Registration:
        """Register a non-algorithm plugin from code. Returns the registration.

        Raises:
            ConfigurationError: as :meth:`register_algorithm`.
        """
        return self._register_code("plugin", name, factory, distribution, version)

    def unregister(self, name: str) -> None:
        """Remove every algorithm and plugin registered under ``name``, whichever distribution registered it."""
        key = _name_key(name)
        with self._lock:
            for kind in ("algorithm", "plugin"):
                table = self._table(kind)
                for registered in [n for n in table if _name_key(n) == key]:
                    del table[registered]
                self.ambiguous.pop((kind, key), None)
            for dist in self.distributions.values():
                dist.registrations[:] = [r for r in dist.registrations if _name_key(r.name) != key]

    # -- lookup ----------------------------------------------------------
    def algorithm(self, name: str) -> Registration:
        """The registration of algorithm ``name``.

        ``name`` is a registered name (``"sparse-momentum"``) or a qualified one,
        ``"<distribution>:<name>"`` (``"sparse-momentum:sparse-momentum"``),
        which picks the algorithm of one distribution. A bare name that more
        than one installed distribution registered is refused: the error names
        the distributions and their qualified names, and the user picks one
        (``Sparsifier(algorithm="dist-a:my-algo")``, ``sparsecore train
        --algorithm dist-a:my-algo``). Other names are unaffected.

        Raises:
            AmbiguousNameError: ``name`` is registered by more than one distribution.
            UnknownAlgorithmError: nobody registered ``name``; the message lists
                the available names and the plugins that failed to load.
        """
        return self._lookup("algorithm", name)

    def plugin(self, name: str) -> Registration:
        """The registration of non-algorithm plugin ``name`` (bare or qualified, as in :meth:`algorithm`).

        Raises:
            AmbiguousNameError: ``name`` is registered by more than one distribution.
            UnknownAlgorithmError: nobody registered ``name``; the message lists the available names.
        """
        return self._lookup("plugin", name)

    def ambiguous_with(self, reg: Registration) -> list[Registration]:
        """The registrations of other distributions under the same name and kind as ``reg``."""
        group = self.ambiguous.get((reg.kind, _name_key(reg.name)), [])
        return [r for r in group if r is not reg]

    def _lookup(self, kind: str, name: str) -> Registration:
        self.load()
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{kind} name must be a non-empty string, got {name!r}")
        with self._lock:
            dist, qualified, bare = name.partition(":")
            if qualified:
                return self._lookup_qualified(kind, dist, bare)
            group = self.ambiguous.get((kind, _name_key(name)))
            if group:
                choices = " or ".join(repr(f"{r.distribution}:{r.name}") for r in group)
                raise AmbiguousNameError(
                    f"{kind} {name!r} is registered by {len(group)} distributions: "
                    + " and ".join(f"{r.distribution!r} {r.version} (module {r.module})" for r in group)
                    + f"; choose one by its qualified name, {choices}, or uninstall all but one")
            reg = _find(self._table(kind), name)
            if reg is None:
                raise UnknownAlgorithmError(self._unknown_message(kind, name))
            return reg

    def _lookup_qualified(self, kind: str, dist: str, name: str) -> Registration:
        wanted = _normalize_distribution(dist)
        of_dist = [r for r in self._registrations(kind) if _normalize_distribution(r.distribution) == wanted]
        found = _find({r.name: r for r in of_dist}, name)
        if found is not None:
            return found
        if of_dist or any(_normalize_distribution(d) == wanted for d in self.distributions):
            offered = [r.name for r in of_dist]
            raise UnknownAlgorithmError(f"unknown {kind} '{dist}:{name}': distribution {dist!r} registers no "
                                        f"{kind} {name!r}{_did_you_mean(name, offered)}; its {kind}s: "
                                        f"{', '.join(_sorted_names(offered)) or 'none'}")
        known = sorted({r.distribution for r in self._registrations(kind)})
        raise UnknownAlgorithmError(f"unknown {kind} '{dist}:{name}': no distribution {dist!r} registers "
                                    f"{kind}s{_did_you_mean(dist, known)}; distributions that do: "
                                    f"{', '.join(known) or 'none'}")

    def _registrations(self, kind: str) -> list[Registration]:
        """Every registration of ``kind``, ambiguous ones included, each once."""
        seen: dict[int, Registration] = {id(r): r for r in self._table(kind).values()}
        for (group_kind, _), group in self.ambiguous.items():
            if group_kind == kind:
                seen.update((id(r), r) for r in group)
        return list(seen.values())

    def _unknown_message(self, kind: str, name: str) -> str:
        table, other_kind = (self.algorithms, self.plugins) if kind == "algorithm" else (self.plugins, self.algorithms)
        if _find(other_kind, name) is not None:
            hint = (f" ({name!r} is a plugin, not an algorithm: pass it in plugins=[...])" if kind == "algorithm"
                    else f" ({name!r} is an algorithm: pass it as algorithm=)")
        else:
            hint = _did_you_mean(name, table)
        message = f"unknown {kind} {name!r}{hint}; available: {', '.join(_sorted_names(table)) or 'none'}."
        if not self.autoload:
            message += (f" Entry-point loading is disabled ({AUTOLOAD_ENV}={os.environ.get(AUTOLOAD_ENV, '')!r}), so "
                        f"installed distributions were not loaded: unset it, or register the {kind} in code.")
        elif kind == "algorithm":
            message += " Install the distribution that provides it (e.g. `pip install sparse-momentum`)."
        if self.load_failures:
            message += f" Plugins that failed to load: {'; '.join(self.load_errors)}"
        return message


def _name_key(name: str) -> str:
    """The form under which algorithm and plugin names compare: case-insensitive."""
    return name.casefold()


def _sorted_names(names: Iterable[str]) -> list[str]:
    """Algorithm or plugin names in alphabetical order, case ignored."""
    return sorted(names, key=lambda n: (_name_key(n), n))


def _did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``names`` (compared case-insensitively), or ``""``."""
    by_key = {_name_key(n): n for n in names}
    close = difflib.get_close_matches(_name_key(name), list(by_key), n=1, cutoff=0.75)
    return f" (did you mean {by_key[close[0]]!r}?)" if close else ""


def _find(table: Mapping[str, Registration], name: str) -> Registration | None:
    """The registration of ``name`` in ``table`` (names compare by :func:`_name_key`)."""
    if name in table:
        return table[name]
    key = _name_key(name)
    return next((reg for registered, reg in table.items() if _name_key(registered) == key), None)


def _normalize_distribution(name: str) -> str:
    """A distribution name as the package index compares them (PEP 503): case and ``-_.`` runs ignored."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _same_distribution(a: str, b: str) -> bool:
    return _normalize_distribution(a) == _normalize_distribution(b)


def _check_registration(kind: str, name: Any, factory: Any, distribution: str) -> None:
    """Refuse a name that is not a non-empty string without ``":"``, and a factory that is not callable."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{distribution}: {kind} name must be a non-empty string, got {name!r}")
    if ":" in name:
        raise ConfigurationError(f"{distribution}: {kind} name {name!r} must not contain ':' "
                                 "(it separates a distribution from a name, as in 'dist-name:algo-name')")
    if not callable(factory):
        raise ConfigurationError(f"{distribution}: factory for {kind} {name!r} is not callable")


registry = Registry()


def available_algorithms() -> list[str]:
    """Names of every algorithm registered in this process, in alphabetical order."""
    registry.load()
    return _sorted_names(registry.algorithms)


def available_plugins() -> list[str]:
    """Names of every non-algorithm plugin registered in this process, in alphabetical order."""
    registry.load()
    return _sorted_names(registry.plugins)


def instantiate(reg: Registration, options: Mapping[str, Any]) -> Any:
    """Call a registration's factory with ``options``; unknown options raise a clear error.

    Raises:
        ConfigurationError: an option the factory does not accept, naming the algorithm or plugin and the option.
    """
    try:
        sig = inspect.signature(reg.factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        accepted = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            takes = f"accepted: {accepted}" if accepted else "it takes no options"
            raise ConfigurationError(f"{reg.kind} {reg.name!r} does not accept option(s) {unknown}; {takes}")
    return reg.factory(**options)


def plugin_entries(plugins: Any) -> list[tuple[Any, dict[str, Any]]]:
    """The ``plugins=`` argument of a run as ``(name or object, options)`` pairs, in order.

    Accepted forms: one name or object; an iterable whose items are names,
    objects or ``(name, {option: value})`` pairs; or a mapping
    ``{name: {option: value}}`` (``None`` for no options). Options go to the
    registered factory of the named plugin (:func:`instantiate` checks them).

    Example:
        ``plugins=[("sparse-kernels-cuda", {"backend": "csr"}), MyLogger()]`` or
        ``plugins={"sparse-kernels-cuda": {"backend": "csr"}}``.

    Raises:
        ConfigurationError: options that are not a mapping with string keys, or a pair whose first item is
            not a name (a plugin object takes no options: configure it directly).
    """
    if isinstance(plugins, Mapping):
        items: list[Any] = [(name, options) for name, options in plugins.items()]
    elif isinstance(plugins, str) or not isinstance(plugins, Iterable):
        items = [plugins]  # one plugin name or object
    else:
        items = list(plugins)
    entries: list[tuple[Any, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, tuple):
            entries.append((item, {}))
            continue
        if len(item) != 2 or not isinstance(item[0], str):
            raise ConfigurationError(f"a plugin with options is a (name, {{option: value}}) pair, got {item!r}; a "
                                     "plugin object takes no options (configure it before passing it)")
        name, options = item
        if options is None:
            options = {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigurationError(f"the options of plugin {name!r} must be a mapping of option name to value, "
                                     f"got {options!r}")
        entries.append((name, dict(options)))
    return entries


def distribution_of(plugin: Any, name: str | None = None) -> tuple[str, str] | None:
    """The distribution (name, version) that provides a plugin object, or ``None`` when unknown.

    A plugin built from a registration (looked up by ``name``, or by its class
    being a registered factory) is its registration's distribution; any other
    object is attributed to the installed distribution that holds its module.
    """
    registry.load()
    regs = [*registry.algorithms.values(), *registry.plugins.values(),
            *(r for group in registry.ambiguous.values() for r in group)]
    by_class = [r for r in regs if isinstance(r.factory, type) and type(plugin) is r.factory]
    by_name = [r for r in regs if name is not None and _name_key(r.name) == _name_key(name)]
    for reg in (*by_class, *by_name):
        if not reg.distribution.startswith("<"):  # "<code>", "<test>": registered from code, no distribution
            return reg.distribution, reg.version
    module = type(plugin).__module__ if not inspect.ismodule(plugin) else plugin.__name__
    top = module.split(".")[0]
    try:
        from importlib.metadata import packages_distributions, version

        dists = packages_distributions().get(top, [])
        if dists:
            return dists[0], version(dists[0])
    except Exception:  # broken metadata: the provenance is only informative
        return None
    return None


def plugin_display_name(plugin: Any) -> str:
    """A readable name for a plugin object in error messages."""
    name = getattr(plugin, "name", None)
    if isinstance(name, str):
        return name
    return type(plugin).__name__ if not inspect.ismodule(plugin) else plugin.__name__


class RunManager:
    """The per-run plugin manager: defaults (``trylast``), one algorithm, the user's plugins.

    First-result hooks are called through :meth:`call_first`, which also tells
    which plugin answered, so errors can name it: it calls the implementations
    one at a time in pluggy's order. Hook wrappers (``hookwrapper=True`` /
    ``wrapper=True``) are therefore refused on first-result hooks, at
    registration; on broadcast hooks they are allowed and run through
    :attr:`hook` as pluggy runs them.
    """

    def __init__(self, algorithm: Any, algorithm_name: str, extra: Iterable[tuple[str, Any]]) -> None:
        from sparsecore import defaults

        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.names: dict[int, str] = {}
        self._register(defaults.BuiltinDefaults(), "sparsecore-defaults")
        self._register(algorithm, algorithm_name, configuration_only_ok=True)
        for name, plugin in extra:
            self._register(plugin, name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            raise ConfigurationError(self._unknown_hooks_message()) from None
        self.algorithm = algorithm

    def _unknown_hooks_message(self) -> str:
        # pluggy names the first offending plugin by its repr; name every one by its registered name
        unknown: dict[str, list[str]] = {}
        for hook_name, caller in vars(self.pm.hook).items():
            if hook_name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    unknown.setdefault(impl.plugin_name, []).append(hook_name)
        parts = []
        for plugin_name, hooks in unknown.items():
            described = []
            for hook_name in sorted(hooks):
                if hook_name in RETIRED_HOOKS:
                    described.append(f"{hook_name!r} ({RETIRED_HOOKS[hook_name]})")
                    continue
                close = difflib.get_close_matches(hook_name, RUN_HOOKS, n=1)
                described.append(f"{hook_name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            parts.append(f"plugin {plugin_name!r} implements unknown hook(s) {', '.join(described)}")
        return f"{'; '.join(parts)}. Valid hooks: {', '.join(RUN_HOOKS)}"

    def _register(self, plugin: Any, name: str, configuration_only_ok: bool = False) -> None:
        # an algorithm may be configuration only (a schedule over the built-in defaults, like ``set``)
        if not configuration_only_ok and not implemented_hooks(plugin):
            raise ConfigurationError(
                f"plugin {name!r} ({type(plugin).__name__}) implements no sparsecore hook; "
                "decorate its methods with @sparsecore.hookimpl")
        base, i = name, 1
        while self.pm.get_plugin(name) is not None:
            i += 1
            name = f"{base}#{i}"
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigurationError(f"plugin {name!r} is invalid: {exc}") from None
        except ValueError as exc:
            raise ConfigurationError(f"plugin {name!r} could not be registered: {exc}") from None
        wrapped = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()
                         if caller.name in FIRST_RESULT_HOOKS
                         and any(impl.plugin is plugin and (impl.wrapper or impl.hookwrapper)
                                 for impl in caller.get_hookimpls()))
        if wrapped:
            self.pm.unregister(plugin)
            raise ConfigurationError(
                f"plugin {name!r} wraps first-result hook(s) {', '.join(map(repr, wrapped))} "
                "(wrapper=True / hookwrapper=True); first-result hooks take plain implementations "
                "(return None to defer to the next plugin); wrappers are allowed on broadcast hooks only")
        self.names[id(plugin)] = name

    @property
    def hook(self) -> Any:
        """The pluggy hook relay (``manager.hook.on_step(...)``)."""
        return self.pm.hook

    def plugins(self) -> list[tuple[str, Any]]:
        """Registered (name, plugin) pairs, defaults first."""
        return [(n, p) for n, p in self.pm.list_name_plugin()]

    def call_first_or_none(self, hook_name: str, **kwargs: Any) -> tuple[Any, str]:
        """Like :meth:`call_first`, but ``(None, "")`` when no plugin answers.

        The implementations are called one at a time in pluggy's order (the
        reverse of registration, ``tryfirst`` first and ``trylast`` last), each
        with only the arguments it names; the first non-``None`` result is
        returned with the registered name of the plugin that gave it.

        Raises:
            ValueError: ``hook_name`` is not a first-result hook.
            pluggy.HookCallError: an implementation needs an argument the call did not give.
        """
        if hook_name not in FIRST_RESULT_HOOKS:
            raise ValueError(f"{hook_name!r} is not a first-result hook; first-result hooks: "
                             f"{', '.join(sorted(FIRST_RESULT_HOOKS))}")
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        for impl in reversed(impls):
            if impl.wrapper or impl.hookwrapper:  # only reachable by registering on self.pm directly
                raise ConfigurationError(f"plugin {impl.plugin_name!r} wraps first-result hook {hook_name!r}; "
                                         "wrappers are allowed on broadcast hooks only")
            try:
                args = [kwargs[arg] for arg in impl.argnames]
            except KeyError as exc:
                raise pluggy.HookCallError(f"hook {hook_name!r} of plugin {impl.plugin_name!r} needs argument "
                                           f"{exc.args[0]!r}, which the call did not provide") from None
            result = impl.function(*args)
            if result is not None:
                return result, impl.plugin_name
        return None, ""

    def call_first(self, hook_name: str, **kwargs: Any) -> tuple[Any, str]:
        """Call a first-result hook; return ``(result, name of the plugin that answered)``."""
        result, who = self.call_first_or_none(hook_name, **kwargs)
        if result is not None:
            return result, who
        raise HookResultError(hook_name, "<none>", "no plugin answered, not even the built-in default")
