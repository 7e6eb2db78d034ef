"""Training config files: reading TOML or YAML into :class:`TrainConfig` values, and writing them back.

A config file holds :class:`~sparsecore.train.config.TrainConfig` fields as
top-level keys (dashes or underscores), the algorithm's options in an
``options`` table and each plugin's options in ``plugin_options.<name>``
tables; an optional ``about`` table of strings (``description``,
``reference``) is for readers and does not change the run. A ``recipe`` key
starts from that recipe's values. The built-in recipes are such files
(``sparsecore/train/recipes/*.toml``).

```toml
recipe = "snfs-mnist"
epochs = 20
plugins = ["sparse-kernels-cuda"]

[options]
prune_rate = 0.4

[plugin_options.sparse-kernels-cuda]
backend = "csr"
```

TOML is read with :mod:`tomllib` (``tomli`` on Python 3.10); YAML (``.yaml``,
``.yml``) needs PyYAML (the ``train`` extra). Every problem is one
:class:`~sparsecore.ConfigurationError` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sparsecore.errors import ConfigurationError
from sparsecore.train.config import TrainConfig

#: File formats by suffix.
FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
#: The table of free text a config file may hold for its readers (not part of the run).
ABOUT_KEY = "about"
ABOUT_FIELDS = ("description", "reference")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _is_plugin_tables(value: Any) -> bool:
    return _is_table(value) and all(_is_table(v) for v in value.values())


#: annotation of a TrainConfig field -> (check, what the check wants, in words)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "int | None": (_is_int, "an integer"),
    "float": (_is_number, "a finite number"),
    "float | None": (_is_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list[int]": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of integers"),
    "list[str]": (_is_str_list, "a list of strings"),
    "dict[str, Any]": (_is_table, "a table of option = value"),
    "dict[str, dict[str, Any]]": (_is_plugin_tables, "a table of plugin name -> table of option = value"),
}


def _field_checks() -> dict[str, tuple[Callable[[Any], bool], str]]:
    checks = {}
    for f in dataclasses.fields(TrainConfig):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if annotation not in _CHECKS:  # a field type this module does not know yet: refuse loudly in tests
            raise TypeError(f"TrainConfig.{f.name}: no config-file check for type {annotation!r}")
        checks[f.name] = _CHECKS[annotation]
    return checks


FIELD_CHECKS = _field_checks()


def file_format(path: str | Path) -> str:
    """``"toml"`` or ``"yaml"``, by the file's suffix.

    Raises:
        ConfigurationError: another suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigurationError(f"config file {path}: unknown format {suffix or '(no suffix)'!r}; "
                                 f"use {', '.join(FORMATS)}")
    return FORMATS[suffix]


def parse_text(text: str, fmt: str, source: str) -> Any:
    """Decode TOML or YAML text (``source`` names it in errors).

    Raises:
        ConfigurationError: the text does not parse, or YAML without PyYAML; one line naming ``source``.
    """
    if fmt == "toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {source}: not valid TOML: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(f"config file {source}: reading YAML needs PyYAML: pip install pyyaml "
                                 "(or 'sparsecore[train]'), or write the file as TOML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ConfigurationError(f"config file {source}: not valid YAML: {reason}") from None


def check_values(data: Any, source: str) -> dict[str, Any]:
    """The :class:`TrainConfig` values of a decoded config file, keys normalised, types checked.

    Dashes in keys (top level and option names) become underscores; the
    ``about`` table is dropped.

    Raises:
        ConfigurationError: not a table, an unknown key (with the closest known one), or a value of the
            wrong type; one line naming ``source`` and the key.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {source}: expected a table of key = value at the top level, "
                                 f"got {type(data).__name__}")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == ABOUT_KEY:
            _check_about(value, source)
            continue
        if key not in FIELD_CHECKS:
            close = difflib.get_close_matches(key, list(FIELD_CHECKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(FIELD_CHECKS)}"
            raise ConfigurationError(f"config file {source}: unknown key {raw_key!r}{hint}")
        if key in values:
            raise ConfigurationError(f"config file {source}: key {key!r} is given twice (as {raw_key!r})")
        check, wanted = FIELD_CHECKS[key]
        if value is None and _optional(key):
            values[key] = None
            continue
        if not check(value):
            raise ConfigurationError(f"config file {source}: key {raw_key!r} must be {wanted}, got {value!r}")
        if key == "options":
            value = _option_keys(value, source, "options")
        elif key == "plugin_options":
            value = {name: _option_keys(opts, source, f"plugin_options.{name}") for name, opts in value.items()}
        values[key] = value
    return values


def _optional(key: str) -> bool:
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    return str(field.type).endswith("| None")


def _option_keys(options: dict[str, Any], source: str, table: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw, value in options.items():
        key = raw.replace("-", "_")
        if key in out:
            raise ConfigurationError(f"config file {source}: {table} key {key!r} is given twice (as {raw!r})")
        out[key] = value
    return out


def _check_about(value: Any, source: str) -> None:
    if not _is_table(value) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigurationError(f"config file {source}: key 'about' must be a table of strings "
                                 f"({', '.join(ABOUT_FIELDS)})")
    unknown = sorted(set(value) - set(ABOUT_FIELDS))
    if unknown:
        raise ConfigurationError(f"config file {source}: unknown key 'about.{unknown[0]}'; the about table holds "
                                 f"{', '.join(ABOUT_FIELDS)}")


def read_about(data: Any) -> dict[str, str]:
    """The ``about`` table of a decoded config file (empty when absent)."""
    about = data.get(ABOUT_KEY, {}) if isinstance(data, dict) else {}
    return dict(about) if isinstance(about, dict) else {}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The :class:`TrainConfig` values a TOML or YAML config file sets.

    Raises:
        ConfigurationError: the file cannot be read, does not parse, or holds an unknown key or a value of
            the wrong type; one line naming the file (and the key).
    """
    fmt = file_format(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return check_values(parse_text(text, fmt, str(path)), str(path))


# ----------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------
def config_values(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` a file records: every field, in order, except ``None`` and empty tables (defaults)."""
    return {k: v for k, v in config.to_dict().items() if v is not None and v != {}}


def dump_config(config: TrainConfig, fmt: str = "toml") -> str:
    """``config`` as the text of a config file in ``fmt`` (``"toml"`` or ``"yaml"``).

    Reading the text back (:func:`check_values` of :func:`parse_text`) gives
    ``config`` again. ``None`` fields are left out (they are the defaults).

    Raises:
        ConfigurationError: YAML without PyYAML, or (TOML) an option whose value TOML cannot hold (``None``).
    """
    values = config_values(config)
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise ConfigurationError("writing YAML needs PyYAML: pip install pyyaml (or 'sparsecore[train]'), "
                                     "or print TOML") from None
        return str(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    if fmt != "toml":
        raise ConfigurationError(f"unknown config format {fmt!r}; use toml or yaml")
    return dump_toml(values)


def dump_toml(values: Mapping[str, Any]) -> str:
    """A mapping as TOML: scalars and lists first, then one table per non-empty mapping value (nested one level).

    Raises:
        ConfigurationError: a ``None`` anywhere (TOML has no null), or a value of another type.
    """
    lines = [f"{toml_key(k)} = {toml_value(v, k)}" for k, v in values.items() if not isinstance(v, Mapping)]
    for key, table in values.items():
        if not isinstance(table, Mapping) or not table:  # an empty table is the default: left out
            continue
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if scalars or not subtables:
            lines += ["", f"[{toml_key(key)}]"] + [f"{toml_key(k)} = {toml_value(v, f'{key}.{k}')}"
                                                    for k, v in scalars.items()]
        for name, sub in subtables.items():
            lines += ["", f"[{toml_key(key)}.{toml_key(name)}]"]
            lines += [f"{toml_key(k)} = {toml_value(v, f'{key}.{name}.{k}')}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


def toml_key(key: str) -> str:
    """A TOML key: bare when it can be, else a quoted string."""
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL, which JSON leaves as is, is escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any, where: str = "value") -> str:
    """A TOML value (inline): string, bool, int, float, list or inline table.

    Raises:
        ConfigurationError: ``None`` (TOML has no null) or another type; names ``where``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_key(str(k))} = {toml_value(v, f'{where}.{k}')}"
                               for k, v in value.items()) + "}"
    if value is None:
        raise ConfigurationError(f"{where} is null, which TOML cannot hold; print the config as YAML instead")
    raise ConfigurationError(f"{where} = {value!r} ({type(value).__name__}) cannot be written to a config file")
