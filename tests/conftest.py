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
# Tests under torch.use_deterministic_algorithms(True) run the reference's matmuls on the GPU too: torch
# releases that check this variable there raise without it (torch 2.14, this repo's CI, no longer checks).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def backend_device(backend):
    """Where a test runs ``backend``: the GPU backends (triton, cuda) on "cuda" when there is one,
    else everything on "cpu" (Triton under the interpreter there)."""
    return "cuda" if HAS_CUDA and backend in ("triton", "cuda") else "cpu"


def skip_unless_available(backend):
    """Skips the calling test, with the reason, where ``backend`` cannot run here. Its ops module must
    import (each imports without its optional dependencies and says what is missing): an exception
    there is a bug, which ``unavailable_reason`` alone would turn into a skip of every test."""
    from scsa_kernels import backends
    backends.load(backend)
    reason = backends.unavailable_reason(backend)
    if reason:
        pytest.skip(reason)

# Other Triton releases for the tests that run Triton's compiler in a subprocess (test_triton_aot.py,
# the direct-launch check of test_triton_ops.py): folders (os.pathsep-separated), each holding one
# release installed with ``pip install --no-deps --target DIR triton==X``. CI passes 3.5 and 3.6.
EXTRA_TRITONS = [d for d in os.environ.get("SCSA_AOT_EXTRA_TRITON", "").split(os.pathsep) if d]


def triton_release(folder):
    """The Triton version installed in folder (its dist-info), or None for the installed one."""
    if folder is None:
        return None
    found = [n for n in os.listdir(folder) if n.startswith("triton-") and n.endswith(".dist-info")]
    assert found, f"SCSA_AOT_EXTRA_TRITON: no triton-*.dist-info in {folder}"
    return found[0][len("triton-"):-len(".dist-info")]


def triton_release_id(folder):
    return "installed-triton" if folder is None else f"triton-{triton_release(folder)}"


def compiled_triton_env(folder=None):
    """The environment of a subprocess that runs Triton's compiler (not the interpreter), with the
    release in ``folder`` (an EXTRA_TRITONS entry) first on PYTHONPATH, or the installed one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if folder is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs on every run (DESIGN.md); SCSA_SEED=<n> replays a run. The seed is
    printed with a failing test's report."""
    seed = int(os.environ.get("SCSA_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


@pytest.fixture(autouse=True)
def _fixed_triton_configs_on_gpu(request, monkeypatch):
    """On a GPU every test but those marked ``autotune`` runs each autotuned Triton kernel's fixed config
    (SCSA_TRITON_AUTOTUNE=0): the autotuner compiles and times every config at each new shape, most of
    the GPU test step's time on a short lease; test_gpu_every_autotune_config checks every config's
    results. (Without a GPU the interpreter runs one config anyway.)"""
    if HAS_CUDA and request.node.get_closest_marker("autotune") is None:
        from scsa_kernels.ops import triton_launch
        monkeypatch.setattr(triton_launch, "AUTOTUNE", False)
    yield


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            item.add_report_section(call.when, "seed", f"replay with SCSA_SEED={seeds[0]}")


def single_channel_group_bias_grads(backend, dtype, draws, device="cpu"):
    """Largest |gradient| of each depthwise conv bias over ``draws`` random draws for each of H = 1, 2,
    with C = 4: each GroupNorm(4) group is then one channel, so the conv bias cannot change the output
    and its gradient is exactly 0. The groups hold 1-2 near-equal values and rstd (up to
    1/sqrt(eps) = 316) amplifies rounding: a float32 SMSA stage left 1e-5 here, past the tolerance
    rule; the kernels compute that stage in float64, which leaves rounding level (< 1e-9)."""
    from scsa_kernels import SCSAConfig, scsa
    from scsa_kernels.testing import random_weights

    config = SCSAConfig(4, window_size=1, group_kernel_sizes=(1, 3, 5, 9))
    gen = torch.Generator().manual_seed(int(torch.randint(2 ** 31, ())))  # replays with SCSA_SEED
    largest = {}
    for height in (1, 2):
        for _ in range(draws):
            x = torch.randn(2, 4, height, 7, generator=gen).to(device, dtype)
            weights = random_weights(config, dtype=dtype, device=device, generator=gen)
            weights = weights.map(lambda t: t.requires_grad_())
            out = scsa(x, weights, config, backend=backend)
            grads = torch.autograd.grad(out, weights.tensors(), torch.randn(out.shape, generator=gen).to(out))
            for name, grad in zip(weights.names(), grads):
                if "dwc" in name and name.endswith(".bias"):
                    largest[name] = max(largest.get(name, 0.0), grad.abs().max().item())
    return largest


# Draws on which the channel attention's softmax backward is ill-conditioned: a row of P puts nearly
# all its weight on one column, whose vbar then lies close to z = P vbar, so vbar_j - z_i cancels all but
# a few bits of a float32 z. The kernels take (vbar_j - anchor_i) - offset_i, anchor = vbar at the
# row's top score (exact at the top column), since 2026-11-27.
# name -> (seed, x's shape, SCSAConfig keywords, factor on the q and k weights)
DOMINATED_SOFTMAX_CASES = {
    # 100 pooled positions, scores up to 28: a row puts 0.9994 on one column. Before the anchor, the q
    # weight's gradient came out 1.25e-5 off (Triton; C++: 3.5e-6), 17x (5x) the float32 reference's
    # own error, past the tolerance rule for Triton (the draw was a CI seed).
    "100_positions": (3885102133, (1, 8, 3, 300), dict(dim=8, window_size=3), 1.0),
    # one pooled position (global pooling), q and k weights x8: scores are scale * q_i * k_j, and the
    # C++ backward takes the top column from the head's max or min of k (q_i's sign) instead of
    # searching each row; with the other extreme as the anchor its q/k gradients were 31x the
    # reference's error on this draw, 1.2x with the right one.
    "1_position": (259, (1, 16, 3, 3), dict(dim=16, window_size=-1), 8.0),
}


def dominated_softmax_errors(backend, device="cpu", case="100_positions"):
    """{name: (error of backend, error of the float32 reference)} of the q and k weight gradients on
    DOMINATED_SOFTMAX_CASES[case] (drawn on the CPU, then moved to device); asserts first that the draw
    still has a dominated row (top weight in (0.99, 0.9999))."""
    from scsa_kernels import SCSAConfig
    from scsa_kernels.reference import scsa_reference
    from scsa_kernels.testing import compare_backend, random_weights

    seed, shape, options, factor = DOMINATED_SOFTMAX_CASES[case]
    config = SCSAConfig(**options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(shape)
        weights = random_weights(config)
        grad_out = torch.randn(x.shape, dtype=torch.float64)
    with torch.no_grad():
        weights.q_weight.mul_(factor)
        weights.k_weight.mul_(factor)
    attention = []  # P, seen through the reference's dropout hook (identity here)
    scsa_reference(x.double(), weights.map(torch.Tensor.double), config, training=True,
                   attention_dropout=lambda p: attention.append(p) or p)
    top = attention[0].amax(dim=-1)
    assert ((top > 0.99) & (top < 0.9999)).any(), f"no dominated softmax row in the draw: {top}"
    errors = {}
    for run in (backend, "reference"):
        for r in compare_backend(run, x.to(device), weights.map(lambda t: t.to(device)), config,
                                 grad_out=grad_out.to(device)):
            if r.name in ("grad q.weight", "grad k.weight"):
                errors.setdefault(r.name, []).append(r.error)
    return {name: tuple(pair) for name, pair in errors.items()}


AUTOCAST_MODES = ("avg_pool", "max_pool", "recombination")


def autocast_differences(backend, mode, x_dtype, device="cpu"):
    """Names of the results (out, dx, every parameter gradient) of ``backend`` that change when the
    forward and backward run inside ``torch.autocast(bfloat16)``: the fused paths compute in float32
    whatever autocast says, so none may. (Autocast reaches into them: the op's kernel is called
    with autocast on, so ATen calls inside it, recombination's GEMMs, ran in bfloat16.)"""
    from scsa_kernels import SCSAConfig, scsa
    from scsa_kernels.testing import random_weights

    config = SCSAConfig(16, head_num=2, window_size=3, down_sample_mode=mode)
    weights = random_weights(config, device=device).map(lambda t: t.requires_grad_())
    x = torch.randn(2, 16, 9, 9, device=device).to(x_dtype).requires_grad_()
    grad_out = torch.randn(x.shape, device=device, dtype=x_dtype)
    runs = []
    for autocast in (False, True):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            out = scsa(x, weights, config, backend=backend)
            runs.append([out, *torch.autograd.grad(out, [x, *weights.tensors()], grad_out)])
    names = ["out", "x"] + weights.names()
    return [name for name, a, b in zip(names, *runs) if not torch.equal(a, b)]
