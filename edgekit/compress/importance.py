"""Importance of every prunable unit's inner channels and heads: from weights (l1) or from calibration
inputs (activation, taylor). One score tensor per unit, higher = more important.

- l1: L1 norm of the weights that write a channel plus of the weights that read it (each normalised by its
  mean, so neither side dominates by scale).
- activation: mean |activation| of the channel on real UNet inputs times the L2 norm of the weights that
  read it (what the next layer actually receives from that channel).
- taylor: first-order estimate of how much the UNet output moves when the channel is zeroed. With a random
  Gaussian projection r of the output (fresh per batch), E[(sum a*d(r.eps)/da)^2] equals ||J a||^2, the
  squared output change, without labels or clean latents.
"""
from __future__ import annotations

from edgekit.errors import InputError

METHODS = ("l1", "activation", "taylor")


def _unit_key(kind: str, path: str) -> str:
    return f"{kind}:{path}"


def _consumers(unet):
    """(kind, path, module whose input is the unit's inner space, channels per unit element)."""
    from edgekit.unet_slicing import prunable_units

    units = prunable_units(unet)
    out = []
    for path, m in units["resnets"]:
        out.append(("resnets", path, m.conv2, 1))
    for path, m in units["feed_forwards"]:
        out.append(("feed_forwards", path, m.net[2], 1))
    for path, m in units["attention_heads"]:
        out.append(("attention_heads", path, m.to_out[0], m.inner_dim // m.heads))
    return out


def _norm(x):
    return x / x.mean().clamp_min(1e-12)


def l1_scores(unet) -> dict[str, "torch.Tensor"]:
    import torch

    from edgekit.unet_slicing import prunable_units

    scores = {}
    units = prunable_units(unet)
    with torch.no_grad():
        for path, m in units["resnets"]:
            write = m.conv1.weight.abs().flatten(1).sum(1)
            read = m.conv2.weight.abs().transpose(0, 1).flatten(1).sum(1)
            scores[_unit_key("resnets", path)] = _norm(write) + _norm(read)
        for path, m in units["feed_forwards"]:
            inner = m.net[2].in_features
            proj = m.net[0].proj.weight.abs().sum(1)
            write = proj[:inner] + proj[inner:]
            read = m.net[2].weight.abs().sum(0)
            scores[_unit_key("feed_forwards", path)] = _norm(write) + _norm(read)
        for path, m in units["attention_heads"]:
            heads = m.heads
            write = sum(lin.weight.abs().reshape(heads, -1).sum(1) for lin in (m.to_q, m.to_k, m.to_v))
            read = m.to_out[0].weight.abs().reshape(m.to_out[0].out_features, heads, -1).sum((0, 2))
            scores[_unit_key("attention_heads", path)] = _norm(write) + _norm(read)
    return scores


def _batches(rows: dict, batch_size: int, limit: int):
    import torch

    n = min(len(rows["sample"]), limit)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        yield (torch.as_tensor(rows["sample"][sl]).float(), torch.as_tensor(rows["timestep"][sl]).float(),
               torch.as_tensor(rows["encoder_hidden_states"][sl]).float())


def data_scores(unet, rows: dict, method: str, batch_size: int = 16, max_rows: int = 128,
                seed: int = 0) -> dict[str, "torch.Tensor"]:
    """activation or taylor scores from calibration UNet rows (sample, timestep, encoder_hidden_states)."""
    import torch

    consumers = _consumers(unet)
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def per_channel(a):
        # conv inputs are (B, C, H, W); linear inputs (B, L, C): reduce everything but batch and channel
        return a.sum((2, 3)) if a.ndim == 4 else a.sum(1)

    def make_hook(key, module, group):
        def hook(mod, args):
            a = args[0]
            if method == "activation":
                value = (a.detach().abs().mean((0, 2, 3)) if a.ndim == 4 else a.detach().abs().mean((0, 1)))
                sums[key] = sums.get(key, 0) + value
            else:
                def grad_hook(g, a=a.detach()):
                    contribution = per_channel(a * g)  # (B, C)
                    if group > 1:
                        contribution = contribution.reshape(contribution.shape[0], -1, group).sum(-1)
                    sums[key] = sums.get(key, 0) + (contribution ** 2).sum(0)
                a.register_hook(grad_hook)
        return hook

    for kind, path, module, group in consumers:
        handles.append(module.register_forward_pre_hook(make_hook(_unit_key(kind, path), module, group)))
    gen = torch.Generator().manual_seed(seed)
    was_training = unet.training
    unet.eval()
    try:
        for sample, t, ctx in _batches(rows, batch_size, max_rows):
            if method == "activation":
                with torch.no_grad():
                    unet(sample, t, ctx)
            else:
                sample = sample.requires_grad_(True)
                out = unet(sample, t, ctx).sample
                r = torch.randn(out.shape, generator=gen)
                (out * r).sum().backward()
                unet.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
        unet.train(was_training)
    scores = {}
    for kind, path, module, group in consumers:
        key = _unit_key(kind, path)
        value = sums[key]
        if method == "activation":
            col = module.weight.detach()
            col_norm = (col.transpose(0, 1).flatten(1) if col.ndim == 4 else col.transpose(0, 1)).norm(dim=1)
            value = value * col_norm
            if group > 1:
                value = value.reshape(-1, group).sum(-1)
        scores[key] = value.detach().clone()
    return scores


def importance_scores(unet, method: str, rows: dict | None = None, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """Scores keyed "kind:path" for every prunable unit of ``unet``."""
    if method not in METHODS:
        raise InputError(f"expected one of {', '.join(METHODS)}", param="importance", value=method)
    if method == "l1":
        return l1_scores(unet)
    if rows is None:
        raise InputError("needs calibration rows (an edgekit calibrate output of the model)", param="importance",
                         value=method)
    return data_scores(unet, rows, method, seed=seed)


def group_balanced_order(scores, groups: int):
    """Channel order for a GroupNorm'd space that keeps group membership: whole groups ordered by their
    total score, channels inside each group by their own score. Returns (order, per-group ranks)."""
    import torch

    per_group = scores.reshape(groups, -1)
    group_order = torch.argsort(per_group.sum(1), descending=True, stable=True)
    inside = torch.argsort(per_group, dim=1, descending=True, stable=True)
    size = per_group.shape[1]
    order = torch.cat([g * size + inside[g] for g in group_order.tolist()])
    return order, inside
