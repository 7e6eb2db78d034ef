"""Project templates, and the ``sparsecore new-plugin`` subcommand that renders them.

Two kinds of package (:data:`KINDS`), each a complete third-party
distribution with a hatchling ``pyproject.toml`` declaring the ``sparsecore``
entry point, a README and tests that pass once it is installed (with plugin
autoload on or off):

* ``templates/plugin/`` (kind ``algorithm``, the default): an algorithm
  whose ``select_grow`` picks the largest dense gradients (RigL-style), tested
  with the conformance suite;
* ``templates/observer/`` (kind ``observer``): a non-algorithm plugin that
  records the pruned and grown counts of every topology update, activated by
  name with options.

Files end in ``.tmpl`` (so neither pytest nor the build backend treats them
as code) and use ``{{ key }}`` placeholders; a path part ``__module__``
becomes the import name.

Example:
    ```bash
    sparsecore new-plugin gradient-growth --dir ~/src
    sparsecore new-plugin update-log --kind observer --dir ~/src
    cd ~/src/sparsecore-gradient-growth && pip install -e ".[test]" && pytest
    ```
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

TEMPLATE_SUFFIX = ".tmpl"
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
_ALGORITHM_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_DIST_NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")
#: Kind of package -> (template folder, suffix of the class name).
KINDS = {"algorithm": ("plugin", "Algorithm"), "observer": ("observer", "Observer")}


@dataclass(frozen=True)
class PluginNames:
    """The names a new plugin package is written with.

    Attributes:
        algorithm: the plugin's public name (``"gradient-growth"``), for either kind.
        dist: the distribution name (``"sparsecore-gradient-growth"``).
        module: the import name (``"sparsecore_gradient_growth"``).
        class_name: the plugin class (``"GradientGrowthAlgorithm"``, ``"UpdateLogObserver"``).
        kind: ``"algorithm"`` or ``"observer"`` (:data:`KINDS`).
    """

    algorithm: str
    dist: str
    module: str
    class_name: str
    kind: str = "algorithm"

    @classmethod
    def from_algorithm(cls, algorithm: str, dist: str | None = None, kind: str = "algorithm") -> PluginNames:
        """Derive every name from the plugin's name (and an optional distribution name).

        The distribution defaults to ``sparsecore-<name>``: a prefix keeps
        the package clear of unrelated same-named projects on the public index.

        Raises:
            ValueError: a name that is not lowercase letters, digits and single hyphens, or an unknown kind.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; choose {' or '.join(KINDS)}")
        if not _ALGORITHM_NAME.match(algorithm):
            raise ValueError(f"plugin name {algorithm!r} must be lowercase letters and digits separated by single "
                             "hyphens, starting with a letter (e.g. 'gradient-growth')")
        dist = dist or f"sparsecore-{algorithm}"
        if not _DIST_NAME.match(dist):
            raise ValueError(f"distribution name {dist!r} must be lowercase letters and digits separated by single "
                             "hyphens or underscores, starting with a letter")
        module = dist.replace("-", "_")
        if keyword.iskeyword(module):
            raise ValueError(f"import name {module!r} is a Python keyword; choose another distribution name")
        class_name = "".join(part.capitalize() for part in algorithm.split("-")) + KINDS[kind][1]
        return cls(algorithm, dist, module, class_name, kind)

    def values(self) -> dict[str, str]:
        """Placeholder values for the templates (``name`` and ``algorithm`` both hold the plugin's name)."""
        return {"algorithm": self.algorithm, "name": self.algorithm, "dist": self.dist, "module": self.module,
                "class_name": self.class_name}


def template_root(name: str = "plugin") -> Traversable:
    """The directory of template ``name``, inside the installed package."""
    root = resources.files(__name__).joinpath(name)
    if not root.is_dir():
        raise FileNotFoundError(f"no template named {name!r} in {__name__}")
    return root


def render_text(text: str, values: dict[str, str]) -> str:
    """Replace every ``{{ key }}`` in ``text``.

    Raises:
        KeyError: a placeholder with no value.
    """
    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{ {key} }}}} has no value; known: {sorted(values)}")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def _walk(node: Traversable, prefix: tuple[str, ...] = ()):
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _walk(child, (*prefix, child.name))
        elif child.name.endswith(TEMPLATE_SUFFIX):
            yield (*prefix, child.name), child


def render_plugin(names: PluginNames) -> dict[str, str]:
    """The files of a new plugin package of ``names.kind``: relative path -> content."""
    values = names.values()
    files = {}
    for parts, source in _walk(template_root(KINDS[names.kind][0])):
        parts = tuple(names.module if p == "__module__" else p for p in parts)
        path = "/".join(parts)[: -len(TEMPLATE_SUFFIX)]
        files[path] = render_text(source.read_text(encoding="utf-8"), values)
    return files


def write_plugin(algorithm: str, directory: str | Path = ".", dist: str | None = None,
                 kind: str = "algorithm") -> Path:
    """Write a new plugin package into ``directory/<dist>`` and return that path.

    Args:
        algorithm: the plugin's public name.
        directory: the parent directory (created if missing).
        dist: the distribution name (default ``sparsecore-<algorithm>``).
        kind: ``"algorithm"`` (default) or ``"observer"`` (:data:`KINDS`).

    Raises:
        ValueError: a bad name or kind.
        FileExistsError: the target directory exists and is not empty.
    """
    names = PluginNames.from_algorithm(algorithm, dist, kind)
    target = Path(directory) / names.dist
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty; choose another --dir or name")
    for rel, content in render_plugin(names).items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return target


def _new_plugin_command(args: argparse.Namespace) -> int:
    try:
        target = write_plugin(args.name, args.dir, args.dist, args.kind)
    except (ValueError, FileExistsError) as exc:
        print(f"sparsecore new-plugin: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}\nnext:\n  cd {target}\n  pip install -e \".[test]\"\n  pytest")
    return 0


def add_new_plugin_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``new-plugin`` subcommand to the ``sparsecore`` parser."""
    p = subparsers.add_parser(
        "new-plugin", help="write a new plugin package: an algorithm (default) or an observer, with its entry "
                           "point and passing tests",
        description="Write a package for a new plugin: pyproject.toml with the `sparsecore` entry point, the "
                    "plugin, a README, and tests that pass once it is installed. --kind algorithm (default): a "
                    "RigL-style algorithm (an update schedule; hooks before_optimizer_step and select_grow, the "
                    "largest dense gradients) tested with the conformance suite. --kind observer: a plugin that "
                    "is not an algorithm (hook on_topology_update: records pruned/grown counts per update), "
                    "activated by name with options.")
    p.add_argument("name", help="the plugin's name, e.g. gradient-growth")
    p.add_argument("--kind", choices=tuple(KINDS), default="algorithm",
                   help="algorithm (default) or observer (a non-algorithm plugin)")
    p.add_argument("--dir", default=".", help="parent directory of the new package (default: current directory)")
    p.add_argument("--dist", default=None, help="distribution name (default: sparsecore-NAME)")
    p.set_defaults(func=_new_plugin_command)
    return p
