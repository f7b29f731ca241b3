"""Shared fixtures: the offline data copies, an isolated cache, real MNIST, a small trained CNN.

Nothing in the test suite may reach the network: every test runs with
``ROBUSTOPT_OFFLINE=1``, a private ``ROBUSTOPT_CACHE`` and ``urlopen`` replaced by a
function that fails loudly. Real data comes from ``../shared/data`` (see its README).
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustopt.data import load_dataset
from robustopt.models import build_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

# The CI/dev machines share two cores between several jobs. More than one intra-op
# thread per process makes PyTorch's OpenMP workers spin against each other and slows
# small CPU workloads by 10-40x, so the tests use one thread unless told otherwise.
torch.set_num_threads(int(os.environ.get("ROBUSTOPT_TEST_THREADS", "1")))


def _no_network(*args, **kwargs):
    raise AssertionError("tests must not touch the network (ROBUSTOPT_OFFLINE is set)")


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory):
    """Session-wide: private cache dir, offline mode, and no way to open a URL.

    Session-scoped (not per-test) so the session fixtures below run under it too; test
    modules may still override the variables per test with ``monkeypatch``.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTOPT_CACHE", str(tmp_path_factory.mktemp("robustopt-cache")))
        mp.setenv("ROBUSTOPT_OFFLINE", "1")
        mp.setattr(urllib.request, "urlopen", _no_network)
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only offline dataset directory ``<repo>/../shared/data``."""
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"offline datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_small(shared_data) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 500 MNIST test images as float32 ``[500, 1, 28, 28]`` in [0, 1], int64 labels.

    Shared by many tests: treat the tensors as read-only.
    """
    test = load_dataset("mnist", "test", data_dir=shared_data, download=False)
    return test.tensors(n=500)


@pytest.fixture(scope="session")
def trained_small_cnn(shared_data) -> torch.nn.Module:
    """``small-mnist`` trained for a few seconds (Adam, 2000 real training images).

    Returned in eval mode; reaches about 94% clean accuracy on ``mnist_small``
    (checked > 85% in test_attacks). Shared: do not train or modify it.
    """
    train = load_dataset("mnist", "train", data_dir=shared_data, download=False)
    x, y = train.tensors(n=2000)
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("small-mnist", mean=MNIST_MEAN, std=MNIST_STD)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(6):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 100):
            idx = perm[i:i + 100]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()
