"""Shared test setup: without a GPU, Triton kernels run on CPU tensors through the Triton interpreter.

The variable must be set before anything imports ``triton``; conftest.py is imported before any test module.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


pytest_plugins = ["failure_log"]  # MOBILEVITV2_FAILURE_LOG: failures written as they happen
