"""Version of the sparsecore-swat distribution."""

__version__ = "0.4.0"
