"""Version of the sparsecore-dsd distribution."""

__version__ = "0.4.0"
