"""Shared test setup.

Without a CUDA GPU, Triton kernels run on CPU tensors under the interpreter; the
variable must be set before anything imports triton, hence here.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _seed_from_test_name(request):
    """Fresh inputs per test, reproducible per test id (print the seed on failure)."""
    seed = int.from_bytes(os.urandom(4), "little") if os.environ.get("SCSA_RANDOM_SEED") else (
        hash(request.node.nodeid) & 0x7FFFFFFF)
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield
