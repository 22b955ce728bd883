"""Fixtures shared across the test packages (each package's own live in its conftest.py). Helpers that
tests call with their own arguments are in tests/support/."""

import os
import random

import numpy as np
import pytest
import torch

# triton 3.9 reads TRITON_INTERPRET when `@triton.jit` decorates, i.e. when `kernels` is first imported,
# not when triton is: setting it at the top of tests/kernels/test_kernels.py is too late once an earlier test
# module has imported `kernels` (through predictor_service, say). conftest.py is imported before any test
# module. Only without CUDA: on a GPU the kernel tests run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="module")
def triton_server():
    """A real `tritonserver` on free loopback ports. Module-scoped: one start (~10 s on 2 cores) serves every
    test of the module that asks for it; stopped and its run directory removed in teardown."""
    # Imported here, not at the top: this file must set TRITON_INTERPRET before anything imports `kernels`.
    from predictor_service.triton_server import TritonServer

    with TritonServer() as server:
        yield server


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(train, dev) of tests.support.datasets.synthetic_dataset: 240 and 90 prompts."""
    from tests.support.datasets import synthetic_dataset
    from training.data import load_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return load_dataset(synthetic_dataset(root / "train")), load_dataset(synthetic_dataset(root / "dev", 90, 1))


@pytest.fixture(scope="module")
def trained(synthetic):
    """(artifact, result) of a small static-encoder head trained on `synthetic`."""
    from training.fit import TrainConfig, train

    train_ds, dev_ds = synthetic
    artifact, result = train(train_ds, dev_ds, encoder_name="static",
                             config=TrainConfig(hidden=32, max_epochs=60, patience=60), show_progress=False)
    return artifact, result
