"""Hypothesis strategies shared by the backends' property tests (test_cpu_ops, test_triton_ops)."""
import torch
from hypothesis import strategies as st

from scsa_kernels.config import SCSAConfig
from scsa_kernels.testing import random_weights


@st.composite
def random_cases(draw, dtypes, device="cpu"):
    """(config, x, weights, grad_out): any option of SPEC.md, odd sizes, one of ``dtypes``, any layout;
    the tensors come from one drawn seed, so a failing example replays exactly."""
    heads = draw(st.sampled_from([1, 2, 4]))
    window = draw(st.sampled_from([-1, 1, 2, 3, 5, 7]))
    config = SCSAConfig(4 * heads * draw(st.integers(1, 3)), head_num=heads, window_size=window,
                        group_kernel_sizes=tuple(draw(st.lists(st.sampled_from([1, 3, 5, 7, 9]), min_size=4,
                                                               max_size=4))),
                        qkv_bias=draw(st.booleans()),
                        down_sample_mode=draw(st.sampled_from(["avg_pool", "max_pool", "recombination"])),
                        gate_layer=draw(st.sampled_from(["sigmoid", "softmax"])))
    side = max(window, 1)
    B, H, W = draw(st.integers(1, 3)), draw(st.integers(side, side + 9)), draw(st.integers(side, side + 9))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "sliced", "permuted"]))
    gen = torch.Generator().manual_seed(seed)
    C = config.dim

    def on_device(t):  # before slicing: .to() lays a non-dense tensor out anew (another device or dtype)
        return t.to(device, dtype)
    if layout == "sliced":
        x = on_device(torch.randn(B, C + 3, H + 2, W + 5, generator=gen))[:, 1:C + 1, 1:H + 1, 2:W + 2]
    elif layout == "permuted":
        x = on_device(torch.randn(H, B, W, C, generator=gen)).permute(1, 3, 0, 2)
    else:
        x = on_device(torch.randn(B, C, H, W, generator=gen))
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(x.shape, dtype=torch.float64, generator=gen).to(device)
    return config, x, random_weights(config, dtype=dtype, device=device, generator=gen), grad_out
