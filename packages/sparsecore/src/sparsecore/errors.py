"""Exceptions raised by sparsecore. Each names the problem and, for plugin faults, the hook and plugin."""

from __future__ import annotations


class SparsecoreError(Exception):
    """Base class of every sparsecore error."""


class ConfigurationError(SparsecoreError, ValueError):
    """Bad input to the engine: density, distribution, layer selection, options."""


class UnknownAlgorithmError(ConfigurationError, KeyError):
    """An algorithm or plugin name that no installed distribution registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousNameError(ConfigurationError):
    """An algorithm or plugin name that more than one installed distribution registered.

    The message names the distributions and the qualified names
    (``"dist-name:algo-name"``) that pick one of them.
    """


class NoPrunableLayersError(ConfigurationError):
    """The model has no layer the engine can make sparse."""


class HookResultError(SparsecoreError):
    """A plugin returned a result that breaks its hook's contract.

    Attributes:
        hook: the hook's name.
        plugin: the name of the plugin that answered.
    """

    def __init__(self, hook: str, plugin: str, message: str) -> None:
        self.hook = hook
        self.plugin = plugin
        super().__init__(f"hook {hook!r} of plugin {plugin!r}: {message}")


class CheckpointError(SparsecoreError):
    """A sparsifier state dict that does not fit this model or run."""
