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
def _fresh_seed(request):
    """Fresh random inputs on every run (DESIGN.md); SCSA_SEED=<n> replays a run. The seed is
    printed with a failing test's report."""
    seed = int(os.environ.get("SCSA_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            item.add_report_section(call.when, "seed", f"replay with SCSA_SEED={seeds[0]}")
