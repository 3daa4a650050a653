"""GPU tests are marked `gpu` and reported as skipped ("needs an NVIDIA GPU") unless
CUDA_IPC_GPU_TESTS=1, which the GPU bundle sets: there a missing GPU fails them."""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (run with CUDA_IPC_GPU_TESTS=1)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CUDA_IPC_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (set CUDA_IPC_GPU_TESTS=1 on a GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
