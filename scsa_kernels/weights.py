"""The SCSA parameters as plain tensors, and the packed form the fused kernels take.

``SCSAWeights`` mirrors the authors' state_dict layout (SPEC.md table). Fused
backends pack once per forward: under autograd either as a handful of tiny
differentiable torch ops (``pack_weights``, traced by torch.compile) or inside
one autograd node whose backward applies the adjoint (``unpack_gradients``).
"""
from __future__ import annotations

import functools
import weakref
from typing import NamedTuple, Optional, Tuple

import torch

from .config import SCSAConfig

Tensor = torch.Tensor


class SCSAWeights(NamedTuple):
    """Parameters in the authors' shapes (g = dim // 4, k_j = group_kernel_sizes[j])."""

    conv_weights: Tuple[Tensor, Tensor, Tensor, Tensor]  # (g, 1, k_j) each
    conv_biases: Tuple[Tensor, Tensor, Tensor, Tensor]   # (g,) each
    norm_h_weight: Tensor  # (dim,)
    norm_h_bias: Tensor    # (dim,)
    norm_w_weight: Tensor  # (dim,)
    norm_w_bias: Tensor    # (dim,)
    norm_weight: Tensor    # (dim,)
    norm_bias: Tensor      # (dim,)
    q_weight: Tensor       # (dim, 1, 1, 1)
    k_weight: Tensor       # (dim, 1, 1, 1)
    v_weight: Tensor       # (dim, 1, 1, 1)
    q_bias: Optional[Tensor] = None   # (dim,) when qkv_bias
    k_bias: Optional[Tensor] = None
    v_bias: Optional[Tensor] = None
    conv_d_weight: Optional[Tensor] = None  # (dim, dim*ws*ws, 1, 1) in recombination mode

    def tensors(self):
        """Every parameter tensor present, flat."""
        flat = [*self.conv_weights, *self.conv_biases, *self[2:]]
        return [t for t in flat if t is not None]

    def names(self):
        """Names matching ``tensors()`` one to one (the authors' state_dict keys)."""
        flat = [f"{c}.weight" for c in CONV_NAMES] + [f"{c}.bias" for c in CONV_NAMES] + [
            "norm_h.weight", "norm_h.bias", "norm_w.weight", "norm_w.bias", "norm.weight", "norm.bias",
            "q.weight", "k.weight", "v.weight", "q.bias", "k.bias", "v.bias", "conv_d.weight"]
        values = [*self.conv_weights, *self.conv_biases, *self[2:]]
        return [n for n, t in zip(flat, values) if t is not None]

    def map(self, fn) -> "SCSAWeights":
        """A copy with ``fn`` applied to every tensor present (None stays None)."""
        apply = lambda t: None if t is None else fn(t)
        return SCSAWeights(tuple(map(apply, self.conv_weights)), tuple(map(apply, self.conv_biases)),
                           *map(apply, self[2:]))


CONV_NAMES = ("local_dwc", "global_dwc_s", "global_dwc_m", "global_dwc_l")  # the four groups' Conv1d modules


@functools.lru_cache(maxsize=None)
def parameter_shapes(config: SCSAConfig) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """(the authors' state_dict key, shape) of every parameter ``config`` needs, in
    ``SCSAWeights.tensors()`` order: SPEC.md's table."""
    C, g, ws = config.dim, config.group_channels, config.window_size
    shapes = [(f"{conv}.weight", (g, 1, k)) for conv, k in zip(CONV_NAMES, config.group_kernel_sizes)]
    shapes += [(f"{conv}.bias", (g,)) for conv in CONV_NAMES]
    shapes += [(f"{norm}.{p}", (C,)) for norm in ("norm_h", "norm_w", "norm") for p in ("weight", "bias")]
    shapes += [(f"{proj}.weight", (C, 1, 1, 1)) for proj in "qkv"]
    shapes += [(f"{proj}.bias", (C,)) for proj in "qkv"] if config.qkv_bias else []
    shapes += [("conv_d.weight", (C, C * ws * ws, 1, 1))] if config.uses_conv_d else []
    return tuple(shapes)


def check_weights(weights: SCSAWeights, config: SCSAConfig, tensors) -> None:
    """ValueError unless ``weights`` (``tensors``: its ``tensors()``) holds exactly the parameters
    ``config`` needs, in their shapes: the fused kernels index them by the config's sizes."""
    expected = parameter_shapes(config)
    if len(tensors) == len(expected) and all(t.shape == shape for t, (_, shape) in zip(tensors, expected)):
        return
    got = dict(zip(weights.names(), (tuple(t.shape) for t in tensors)))
    for name, shape in expected:
        if got.get(name) != shape:
            raise ValueError(f"SCSA: weights do not fit the config: {name} must have shape {shape}, "
                             f"got {got[name] if name in got else 'none'} ({config})")
    unexpected = sorted(set(got) - {name for name, _ in expected})
    raise ValueError(f"SCSA: weights do not fit the config: it has no {unexpected} ({config})")


class PackedWeights(NamedTuple):
    """The layout every fused kernel reads, all float32 and contiguous (C = dim, K = max kernel size).

    The four depthwise kernels are zero-padded symmetrically to K: for odd sizes
    and padding k//2 this leaves the convolution unchanged, so one (C, K) table
    serves every group.
    """

    conv_weight: Tensor    # (C, K)
    conv_bias: Tensor      # (C,)
    norm_h_weight: Tensor  # (C,)
    norm_h_bias: Tensor    # (C,)
    norm_w_weight: Tensor  # (C,)
    norm_w_bias: Tensor    # (C,)
    norm_weight: Tensor    # (C,)
    norm_bias: Tensor      # (C,)
    qkv_weight: Tensor     # (3, C): per-channel scales of q, k, v
    qkv_bias: Tensor       # (3, C): zeros when the module has no q/k/v bias


_CONSTANTS = {}  # key -> a tensor the weight packing reuses across eager calls (gather indices, a zero)


def _constant(key, build) -> Tensor:
    """``build()``, cached under ``key`` for eager calls. Traced by torch.compile it is a graph
    constant, built anew: reading the cache would put it in the graph's guards, and the first call
    that fills it (the compiled call itself, or any eager one) would then trigger a recompile."""
    if torch.compiler.is_compiling():
        return build()
    value = _CONSTANTS.get(key)
    if value is None:
        with torch.inference_mode(False):  # an inference tensor could not be saved by a later call's autograd
            value = build()
        if not capturing_cuda_graph(value):  # made inside a CUDA graph capture, it holds nothing until a replay
            _CONSTANTS[key] = value
    return value


def gradient_index(config: SCSAConfig, device) -> Tensor:
    """(n,) int64 on device, n = the packed parameters' element count: for each element of their flat
    concatenation (``packed_parameters`` order), its position among the ``PackedWeights`` fields laid
    out back to back. ``unpack_gradients`` gathers by it; so does the Triton backend's
    parameter_grads_kernel."""
    return _gather_index("unpack", config, device)


def _gather_index(direction: str, config: SCSAConfig, device) -> Tensor:
    """The gather index of ``pack_weights`` (direction "pack") or ``unpack_gradients`` ("unpack")."""
    return _constant((direction, config, device), lambda: _new_gather_index(direction, config, device))


def _new_gather_index(direction: str, config: SCSAConfig, device) -> Tensor:
    """int64 on device: "pack" gathers the packed fields from the parameters' flat cat (+ the zero),
    "unpack" the parameters' gradients from the packed fields' flat gradients."""
    positions, zero = _packed_sources(config)
    if direction == "unpack":  # every parameter element is packed exactly once: invert the map
        inverse = [0] * zero
        for packed, source in enumerate(positions):
            if source != zero:
                inverse[source] = packed
        positions = inverse
    return torch.tensor(positions, dtype=torch.int64).to(device)


def _packed_sources(config: SCSAConfig):
    """(sources, zero): for each element of the ``PackedWeights`` fields laid out back to back, its
    position in ``cat([conv weights (flat), conv biases, the six norm params, q, k, v scales, (q, k, v
    biases), 0])``; the conv table is padded symmetrically to K, and the final zero (position
    ``zero``) stands in for padding and absent biases."""
    C, K = config.dim, config.max_kernel_size
    g = config.group_channels
    conv_size = g * sum(config.group_kernel_sizes)
    zero = conv_size + (13 if config.qkv_bias else 10) * C
    conv, offset = [], 0
    for k in config.group_kernel_sizes:
        pad = (K - k) // 2
        for r in range(g):
            conv += [offset + r * k + t - pad if pad <= t < pad + k else zero for t in range(K)]
        offset += g * k
    rest = list(range(conv_size, zero))  # conv biases, 6 norm params, q/k/v scales, (q/k/v biases)
    biases = [] if config.qkv_bias else [zero] * (3 * C)
    return conv + rest + biases, zero


def packed_parameters(weights: SCSAWeights, config: SCSAConfig):
    """The parameters ``pack_weights`` reads, in its order: ``weights.tensors()`` without conv_d."""
    params = [*weights.conv_weights, *weights.conv_biases, *weights[2:11]]
    if config.qkv_bias:
        params += [weights.q_bias, weights.k_bias, weights.v_bias]
    return params


def conv_d_matrix(weights: SCSAWeights, config: SCSAConfig) -> Optional[Tensor]:
    """conv_d's weight as the (C, C*ws*ws) matrix the fused kernels take, in its own dtype (a view);
    None without recombination."""
    return weights.conv_d_weight.flatten(1) if config.uses_conv_d else None


def unpacked_parameters(weights: SCSAWeights, config: SCSAConfig):
    """The parameters the fused kernels read as they are, not packed: conv_d, when present."""
    return [weights.conv_d_weight] if config.uses_conv_d else []


def pack_weights(weights: SCSAWeights, config: SCSAConfig, dtype: torch.dtype = torch.float32) -> PackedWeights:
    """Differentiable packing of ``weights`` into ``PackedWeights`` (float32, or ``dtype``: float64 for
    float64 inputs, so gradcheck sees full precision).

    One cat, one gather, one split (and a cast): every packed element is a copy of one parameter
    element or of a constant zero, so values and gradients are exact, with few autograd nodes.
    ``unpack_gradients`` is its adjoint."""
    return _pack_flat(_flat_parameters(packed_parameters(weights, config)), config, dtype)


def _flat_parameters(params) -> Tensor:
    """The parameters ``params`` (``packed_parameters`` order) flattened back to back, then a zero (the
    source of the packing's padding): one C++ call, as DDP's torch._utils flatten helpers do it."""
    zero = _constant(("zero", params[0].dtype, params[0].device), lambda: params[0].new_zeros(1))  # no fill per call
    return torch._utils._flatten_dense_tensors([*params, zero])


def _pack_flat(flat: Tensor, config: SCSAConfig, dtype: torch.dtype) -> PackedWeights:
    """``PackedWeights`` (``dtype``) of the parameters' ``_flat_parameters``: a gather and a cast."""
    packed = flat.index_select(0, _gather_index("pack", config, flat.device)).to(dtype)
    return split_packed(packed, config.dim, config.max_kernel_size)


def split_packed(flat: Tensor, C: int, K: int) -> PackedWeights:
    """The ten ``PackedWeights`` fields as views of ``flat`` (C*K + 13*C,), where they lie back to back
    (the packed weights, or their gradients from a fused backward)."""
    # split_with_sizes: Tensor.split's Python wrapper costs ~3 us per call on a 2-core VM
    conv_w, conv_b, nh_w, nh_b, nw_w, nw_b, n_w, n_b, qkv_w, qkv_b = flat.split_with_sizes(
        (C * K, C, C, C, C, C, C, C, 3 * C, 3 * C))
    return PackedWeights(conv_w.view(C, K), conv_b, nh_w, nh_b, nw_w, nw_b, n_w, n_b,
                         qkv_w.view(3, C), qkv_b.view(3, C))


def unpack_gradients(packed_grads, weights: SCSAWeights, config: SCSAConfig):
    """The adjoint of ``pack_weights``: gradients of the ten packed tensors (any float dtype; a
    sequence, or one flat tensor with the ten back to back in ``PackedWeights`` order) ->
    gradients of the parameters it read (``packed_parameters`` order: ``weights.tensors()``
    without conv_d), in their shapes and dtype. Each parameter element is packed exactly once
    (padding taps and absent biases copy the zero), so this is one gather: no zero fill, no
    scatter-add (atomics on CUDA). Runs without autograd (the fused backends' eager backward)."""
    params = packed_parameters(weights, config)
    flat_grad = packed_grads if isinstance(packed_grads, Tensor) else torch._utils._flatten_dense_tensors(packed_grads)
    return gradients_like(flat_grad.index_select(0, gradient_index(config, flat_grad.device)), params)


def shared_dtype(params) -> Optional[torch.dtype]:
    """The dtype of every tensor of ``params``, or None where they mix dtypes (a float16 module whose
    GroupNorms stay float32, as mmcv's wrap_fp16_model keeps them)."""
    dtype = params[0].dtype
    return dtype if all(p.dtype == dtype for p in params) else None


def gradients_like(flat: Tensor, params):
    """flat (the gradients of ``params`` back to back, any float dtype) as views in the parameters'
    shapes, each in its parameter's dtype. Where they share one: one cast, and one C++ call makes the
    views (a Python loop of .view costs microseconds each); else a cast each."""
    dtype = shared_dtype(params)
    if dtype is not None:
        return list(torch._utils._unflatten_dense_tensors(flat.to(dtype), params))
    return [g.to(p.dtype) for g, p in zip(torch._utils._unflatten_dense_tensors(flat, params), params)]


class InferencePackCache:
    """Packed weights of inference calls on CPU tensors. Packing is a few small torch ops, together
    about a third of the fused CPU kernel's time at batch 1 (1x64x14x14: ~50 us of ~150 on a 2-core
    VM); without autograd it only needs redoing when a weight changes. An entry is reused while
    every weight is the very same live tensor (weak references) and holds the very bits it held when
    packed: the weights are flattened (one C++ call) and compared bitwise with the entry's copy, a
    quarter of the packing's host time. No version counter or data pointer can stand in for that
    comparison: an in-place write through ``.data`` bumps neither (mmengine's EMA hook swaps a
    model's weights so before each validation). Not for CUDA tensors, where the comparison's answer
    would wait for the device: the Triton backend runs its pack kernel on every call instead, the
    launch kept and repeated with little host time (ops/triton.py ``_inference_pack``).

    An entry lives as long as its weights (a weak reference's callback drops it when one dies), so
    every module of a live model keeps its pack: a fixed number of recent entries (32 until
    2026-11-27) missed on every call of a model with more SCSA modules than that, called in turn
    (SCSA in each of ResNet-101's 33 bottlenecks). ``size`` only bounds weights kept alive elsewhere
    in great numbers; past it the oldest entry goes."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.entries = {}

    def get(self, weights, config, dtype):
        params = packed_parameters(weights, config)
        # the pack is no inference tensor (torch.inference_mode): a later call with autograd on x
        # (frozen weights) saves it for backward
        with torch.no_grad(), torch.inference_mode(False):
            flat = _flat_parameters(params)
            key = (tuple(map(id, params)), config, dtype)
            entry = self.entries.get(key)
            if entry is not None:
                refs, bits, packed = entry
                if all(r() is t for r, t in zip(refs, params)) and torch.equal(_bits(flat), bits):
                    return packed
            packed = _pack_flat(flat, config, dtype)
        if len(self.entries) >= self.size:
            self.entries.pop(next(iter(self.entries)))
        drop = functools.partial(_drop_entry, weakref.ref(self), key)
        self.entries[key] = ([weakref.ref(t, drop) for t in params], _bits(flat), packed)
        return packed


def _bits(t: Tensor) -> Tensor:
    """t viewed as integers of its element size: equal where the bits are (NaN payloads, signed zeros)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _drop_entry(cache_ref, key, dead_weight_ref):
    """Weak reference callback: a weight of the cache's entry under ``key`` died. (The cache is held
    weakly: its entries hold these callbacks.)"""
    cache = cache_ref()
    if cache is not None:
        cache.entries.pop(key, None)


_PACK_CACHE = InferencePackCache()


def capturing_cuda_graph(t: Tensor) -> bool:
    """Whether a CUDA graph is being captured on the current stream of CUDA tensor ``t``."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def packing_needs_graph(weights: SCSAWeights) -> bool:
    """Whether a forward must pack ``weights`` with the differentiable torch ops (``pack_weights``):
    autograd records the call and a weight requires grad, or torch.compile traces it."""
    return torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in weights.tensors()))


def cached_packed_weights(weights: SCSAWeights, config: SCSAConfig, dtype: torch.dtype = torch.float32) -> PackedWeights:
    """``pack_weights`` for a forward call of a fused backend on CPU tensors: differentiable (and
    traceable) where ``packing_needs_graph``, else served from the inference cache."""
    if packing_needs_graph(weights):
        return pack_weights(weights, config, dtype=dtype)
    return _PACK_CACHE.get(weights, config, dtype)
