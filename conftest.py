"""Test-session set-up shared by every package's tests (pytest loads this file before any test module).

On a machine without CUDA the Triton kernels of ``sparse-kernels-cuda`` are tested in Triton's interpreter,
which must be switched on before ``triton.language`` is first imported: other test modules import libraries
that import it at collection time (PyTorch Lightning does), so the package's own conftest would be too late.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
