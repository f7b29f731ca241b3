"""keep_freed_memory: applied on Linux/glibc, harmless to call again, never raises."""

from __future__ import annotations

import platform
import sys

import torch

import robustopt


def test_keep_freed_memory_applies_on_glibc_and_is_repeatable():
    first = robustopt.keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True
    assert robustopt.keep_freed_memory() is first
    x = torch.rand(64, 1, 28, 28)  # tensors still allocate, free and reuse correctly
    for _ in range(3):
        y = (x * 2).relu().sum()
    assert torch.isfinite(y)

