"""SPEC.md evaluated a second, independent way: float64, explicit loops and einsum.

No conv1d, group_norm, pooling or pixel_unshuffle from torch: every stage is
spelled out from the spec text, so a shared misreading of an operator cannot
hide in both this and scsa_kernels.reference. Tiny shapes only.
"""
import torch

CONVS = ("local_dwc", "global_dwc_s", "global_dwc_m", "global_dwc_l")


def depthwise_conv(means, sd, cfg):
    """means (B, C, L) -> each group j filtered by its kernel k_j with zero padding k_j // 2."""
    out = torch.zeros_like(means)
    g, length = cfg.group_channels, means.shape[2]
    for j, (name, k) in enumerate(zip(CONVS, cfg.group_kernel_sizes)):
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        for c in range(g):
            ch = j * g + c
            for l in range(length):
                acc = b[c]
                for t in range(k):
                    src = l + t - k // 2
                    if 0 <= src < length:
                        acc = acc + w[c, 0, t] * means[:, ch, src]
                out[:, ch, l] = acc
    return out


def group_norm(t, groups, weight, bias):
    """t (B, C, ...) -> per-sample, per-group standardisation (biased variance, eps 1e-5), affine."""
    shape = t.shape
    grouped = t.reshape(shape[0], groups, -1)
    mean = grouped.sum(-1, keepdim=True) / grouped.shape[-1]
    var = ((grouped - mean) ** 2).sum(-1, keepdim=True) / grouped.shape[-1]
    normed = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape(shape)
    per_channel = (-1,) + (1,) * (len(shape) - 2)
    return normed * weight.reshape(per_channel) + bias.reshape(per_channel)


def gate(t, kind, dim):
    if kind == "softmax":
        e = torch.exp(t - t.amax(dim, keepdim=True))
        return e / e.sum(dim, keepdim=True)
    return 1 / (1 + torch.exp(-t))


def pooled_positions(xs, sd, cfg):
    """xs (B, C, H, W) -> (B, C, N), positions in row-major window order."""
    B, C, H, W = xs.shape
    if cfg.window_size == -1:
        return xs.reshape(B, C, -1).sum(-1, keepdim=True) / (H * W)
    ws = cfg.window_size
    cols = []
    for i in range(H // ws):
        for j in range(W // ws):
            win = xs[:, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws]
            if cfg.down_sample_mode == "avg_pool":
                cols.append(win.sum((2, 3)) / ws ** 2)
            elif cfg.down_sample_mode == "max_pool":
                cols.append(win.reshape(B, C, -1).max(-1).values)
            else:  # recombination: channel c*ws*ws + di*ws + dj of the space-to-depth map, then conv_d
                stacked = win.reshape(B, C * ws * ws)
                cols.append(torch.einsum("oi,bi->bo", sd["conv_d.weight"][:, :, 0, 0], stacked))
    return torch.stack(cols, dim=-1)


def independent_scsa(x, sd, cfg, training_mask=None):
    """x (B, C, H, W) float64, sd: the authors' state_dict (float64) -> out (B, C, H, W)."""
    B, C, H, W = x.shape
    x_h = x.sum(3) / W
    x_w = x.sum(2) / H
    a_h = gate(group_norm(depthwise_conv(x_h, sd, cfg), 4, sd["norm_h.weight"], sd["norm_h.bias"]),
               cfg.gate_layer, 2)
    a_w = gate(group_norm(depthwise_conv(x_w, sd, cfg), 4, sd["norm_w.weight"], sd["norm_w.bias"]),
               cfg.gate_layer, 2)
    xs = torch.einsum("bchw,bch,bcw->bchw", x, a_h, a_w)
    y = group_norm(pooled_positions(xs, sd, cfg), 1, sd["norm.weight"], sd["norm.bias"])
    proj = {}
    for name in "qkv":
        bias = sd.get(f"{name}.bias", torch.zeros(C, dtype=x.dtype))
        proj[name] = sd[f"{name}.weight"].reshape(C, 1) * y + bias.reshape(C, 1)
    heads, d = cfg.head_num, cfg.head_dim
    q, k, v = (proj[n].reshape(B, heads, d, -1) for n in "qkv")
    scores = torch.einsum("bhin,bhjn->bhij", q, k) / d ** 0.5
    probs = gate(scores, "softmax", -1)
    v_mean = v.sum(-1) / v.shape[-1]
    o_mean = torch.einsum("bhij,bhj->bhi", probs, v_mean).reshape(B, C)
    ca = gate(o_mean, cfg.gate_layer, 1)
    return xs * ca[:, :, None, None]
