"""Project templates, and the ``sparsecore new-plugin`` subcommand that renders them.

``templates/plugin/`` holds a complete third-party algorithm package: a
hatchling ``pyproject.toml`` with the ``sparsecore`` entry point, a plugin
module implementing a gradient-magnitude ``select_grow`` (RigL-style), a README
and tests that pass once the package is installed. Files end in ``.tmpl`` (so
neither pytest nor the build backend treats them as code) and use
``{{ name }}`` placeholders; a path part ``__module__`` becomes the import name.

Example:
    ```bash
    sparsecore new-plugin gradient-growth --dir ~/src
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


@dataclass(frozen=True)
class PluginNames:
    """The names a new plugin package is written with.

    Attributes:
        algorithm: the algorithm's public name (``"gradient-growth"``).
        dist: the distribution name (``"sparsecore-gradient-growth"``).
        module: the import name (``"sparsecore_gradient_growth"``).
        class_name: the algorithm class (``"GradientGrowthAlgorithm"``).
    """

    algorithm: str
    dist: str
    module: str
    class_name: str

    @classmethod
    def from_algorithm(cls, algorithm: str, dist: str | None = None) -> PluginNames:
        """Derive every name from the algorithm name (and an optional distribution name).

        The distribution defaults to ``sparsecore-<algorithm>``: a prefix keeps
        the package clear of unrelated same-named projects on the public index.

        Raises:
            ValueError: a name that is not lowercase letters, digits and single hyphens.
        """
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
        class_name = "".join(part.capitalize() for part in algorithm.split("-")) + "Algorithm"
        return cls(algorithm, dist, module, class_name)

    def values(self) -> dict[str, str]:
        """Placeholder values for the templates."""
        return {"algorithm": self.algorithm, "dist": self.dist, "module": self.module, "class_name": self.class_name}


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
    """The files of a new plugin package: relative path -> content."""
    values = names.values()
    files = {}
    for parts, source in _walk(template_root("plugin")):
        parts = tuple(names.module if p == "__module__" else p for p in parts)
        path = "/".join(parts)[: -len(TEMPLATE_SUFFIX)]
        files[path] = render_text(source.read_text(encoding="utf-8"), values)
    return files


def write_plugin(algorithm: str, directory: str | Path = ".", dist: str | None = None) -> Path:
    """Write a new plugin package into ``directory/<dist>`` and return that path.

    Args:
        algorithm: the algorithm's public name.
        directory: the parent directory (created if missing).
        dist: the distribution name (default ``sparsecore-<algorithm>``).

    Raises:
        ValueError: a bad name.
        FileExistsError: the target directory exists and is not empty.
    """
    names = PluginNames.from_algorithm(algorithm, dist)
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
        target = write_plugin(args.name, args.dir, args.dist)
    except (ValueError, FileExistsError) as exc:
        print(f"sparsecore new-plugin: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}\nnext:\n  cd {target}\n  pip install -e \".[test]\"\n  pytest")
    return 0


def add_new_plugin_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``new-plugin`` subcommand to the ``sparsecore`` parser."""
    p = subparsers.add_parser(
        "new-plugin", help="write a new algorithm plugin package (entry point, one hook, passing tests)",
        description="Write a package for a new sparse-training algorithm: pyproject.toml with the `sparsecore` "
                    "entry point, a RigL-style plugin whose select_grow picks the largest dense gradients, a "
                    "README, and tests that pass once it is installed.")
    p.add_argument("name", help="the algorithm's name, e.g. gradient-growth")
    p.add_argument("--dir", default=".", help="parent directory of the new package (default: current directory)")
    p.add_argument("--dist", default=None, help="distribution name (default: sparsecore-NAME)")
    p.set_defaults(func=_new_plugin_command)
    return p
