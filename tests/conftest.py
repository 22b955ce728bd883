import os
import random

import numpy as np
import pytest
import torch

# triton 3.9 reads TRITON_INTERPRET when `@triton.jit` decorates, i.e. when `kernels` is first imported,
# not when triton is: setting it at the top of tests/test_kernels.py is too late once an earlier test module
# has imported `kernels` (through predictor_service, say). conftest.py is imported before any test module.
# Only without CUDA: on a GPU the kernel tests run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
