"""Version of the sparsecore-rigl distribution."""

__version__ = "0.3.0"
