"""Version of sparse-kernels-cuda."""

__version__ = "0.3.1"
