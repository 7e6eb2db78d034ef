"""Named training recipes of the papers (``--recipe NAME``).

A recipe is a set of :class:`~sparsecore.train.config.TrainConfig` values,
shipped as a TOML config file in ``sparsecore/train/recipes/<name>.toml``
(its ``about`` table holds the description and the published number);
a config file and explicit flags override them. ``sparsecore train --recipe
NAME --print-config`` prints one as a file to edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sparsecore.errors import ConfigurationError
from sparsecore.train.config import TrainConfig
from sparsecore.train.config_files import check_values, parse_text, read_about

#: The package folder (inside ``sparsecore.train``) holding one ``<name>.toml`` per recipe.
RECIPE_DIR = "recipes"
#: The order ``--help`` lists the recipes in; a file not named here comes after them, by name.
RECIPE_ORDER = ("snfs-mnist", "snfs-lenet5", "snip-mnist", "snip-official", "swat-wrn-16-8", "swat-vgg16",
                "dsd-mnist")

#: Names that no longer name a recipe, with what to use instead.
RETIRED_RECIPES = {
    "swat-cifar": "it is replaced by the per-model SWAT recipes swat-wrn-16-8 (the WRN-16-8 run it named, on the "
                  "reference's 200-epoch schedule) and swat-vgg16",
}


@dataclass(frozen=True)
class Recipe:
    """A named recipe.

    Attributes:
        name: the name given to ``--recipe``.
        description: what it reproduces and from where.
        values: the :class:`TrainConfig` fields it sets.
        reference: the published number it targets, if any.
    """

    name: str
    description: str
    values: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""


def _load_recipes() -> dict[str, Recipe]:
    """Every recipe file shipped in :data:`RECIPE_DIR`, by name, in :data:`RECIPE_ORDER` (then by name)."""
    folder = resources.files("sparsecore.train").joinpath(RECIPE_DIR)
    recipes = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".toml"):
            continue
        name, source = entry.name[: -len(".toml")], f"sparsecore/train/{RECIPE_DIR}/{entry.name}"
        data = parse_text(entry.read_text(encoding="utf-8"), "toml", source)
        values = check_values(data, source)
        about = read_about(data)
        recipes.append(Recipe(name, about.get("description", ""), values, about.get("reference", "")))
    order = {name: i for i, name in enumerate(RECIPE_ORDER)}
    recipes.sort(key=lambda r: (order.get(r.name, len(order)), r.name))
    return {r.name: r for r in recipes}


#: The built-in recipes, read from the package's recipe files.
RECIPES: dict[str, Recipe] = _load_recipes()


def list_recipes() -> list[str]:
    """Names of the recipes."""
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigurationError: unknown name (the message lists the recipes) or a retired one
            (the message names its replacements).
    """
    if name in RETIRED_RECIPES:
        raise ConfigurationError(f"recipe {name!r} no longer exists: {RETIRED_RECIPES[name]}")
    if name not in RECIPES:
        raise ConfigurationError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a recipe, with ``overrides`` applied on top.

    Raises:
        ConfigurationError: unknown recipe or override key.
    """
    values = {**get_recipe(name).values, **overrides, "recipe": name}
    return TrainConfig.from_dict(values)
