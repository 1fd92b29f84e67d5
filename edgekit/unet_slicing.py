"""Slicing a diffusers UNet's channel spaces: which space each parameter dimension belongs to (walking the UNet
the way its forward runs), index plans over those spaces (the kept channels of each), and applying a plan so
the UNet holds real smaller tensors with every attribute diffusers reads fixed.

The spaces: a resnet's inner channels, a GEGLU feed-forward's inner channels and an attention's heads (all
three shrink without touching the residual stream, so skips stay valid), and for a slimmable model at a width
below 1 the residual stream and each transformer's inner width too (``plan_for_width``: a prefix of every
space). edgekit.structure records the kept widths as data and replays them through this module.
"""
from __future__ import annotations

import math

from edgekit.errors import InputError, ModelFormatError

CHANNEL_MULTIPLE = 8  # every kept width is a multiple of 8 (vector units of mobile NPUs/GPUs)


def _group_multiple(groups: int) -> int:
    return CHANNEL_MULTIPLE * groups // math.gcd(CHANNEL_MULTIPLE, groups)


def prunable_units(unet) -> dict[str, list[tuple[str, object]]]:
    """The layers whose inner width can shrink: {"resnets": [(path, module)], "feed_forwards": [...],
    "attention_heads": [...]}, in module order."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    units = {"resnets": [], "feed_forwards": [], "attention_heads": []}
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D) and not name.startswith("time"):
            units["resnets"].append((name, module))
        elif isinstance(module, FeedForward):
            units["feed_forwards"].append((name, module))
        elif isinstance(module, Attention):
            units["attention_heads"].append((name, module))
    return units


def unit_sizes(unet) -> dict[str, dict[str, int]]:
    """Current widths of every prunable unit (the same keys a Structure records)."""
    units = prunable_units(unet)
    return {
        "resnets": {p: m.conv1.out_channels for p, m in units["resnets"]},
        "feed_forwards": {p: m.net[2].in_features for p, m in units["feed_forwards"]},
        "attention_heads": {p: m.heads for p, m in units["attention_heads"]},
    }


def unit_multiple(unet, kind: str, path: str) -> int:
    """The multiple a unit's kept width must be: 8, and the number of GroupNorm groups where one applies."""
    if kind == "resnets":
        return _group_multiple(unet.get_submodule(path).norm2.num_groups)
    if kind == "feed_forwards":
        return CHANNEL_MULTIPLE
    return 1  # heads: any whole number >= 1; each head keeps its full head dimension


class _Plan:
    """Index tensors per parameter: name -> tuple of (index tensor or None) per leading dimension."""

    def __init__(self):
        self.index: dict[str, tuple] = {}

    def linear(self, module, name: str, out=None, inp=None) -> None:
        # Conv2d and Linear both keep (out, in, ...) in weight; cross-attention k/v keep their input.
        self.index[f"{name}.weight"] = (out, inp)
        if getattr(module, "bias", None) is not None:
            self.index[f"{name}.bias"] = (out,)

    def norm(self, module, name: str, idx) -> None:
        if getattr(module, "weight", None) is not None:
            self.index[f"{name}.weight"] = (idx,)
        if getattr(module, "bias", None) is not None:
            self.index[f"{name}.bias"] = (idx,)


def _cat(a, a_size: int, b, b_size: int):
    import torch

    if a is None and b is None:
        return None
    a = torch.arange(a_size) if a is None else a
    b = torch.arange(b_size) if b is None else b
    return torch.cat([a, b + a_size])


def build_plan(unet, inner, stream=None, transformer_inner=None) -> dict[str, tuple]:
    """Walk an SD-style UNet the way its forward runs and return the per-parameter index plan.

    ``inner(kind, path, size)`` returns the kept indices of a unit's inner space (None keeps all);
    ``stream(size)`` and ``transformer_inner(path, size)`` do the same for the residual stream and a
    transformer's inner width (None: they keep their width, as pruning does)."""
    import torch
    from diffusers.models.attention import BasicTransformerBlock

    stream = stream or (lambda size: None)
    transformer_inner = transformer_inner or (lambda path, size: None)
    plan = _Plan()

    def head_channels(attn, path):
        heads = inner("attention_heads", path, attn.heads)
        if heads is None:
            return None
        dim_head = attn.inner_dim // attn.heads
        return (heads[:, None] * dim_head + torch.arange(dim_head)[None, :]).reshape(-1)

    def resnet(path, module, in_idx, out_size):
        mid = inner("resnets", path, module.conv1.out_channels)
        out = stream(out_size)
        plan.norm(module.norm1, f"{path}.norm1", in_idx)
        plan.linear(module.conv1, f"{path}.conv1", mid, in_idx)
        if module.time_emb_proj is not None:
            plan.linear(module.time_emb_proj, f"{path}.time_emb_proj", mid, None)
        plan.norm(module.norm2, f"{path}.norm2", mid)
        plan.linear(module.conv2, f"{path}.conv2", out, mid)
        if module.conv_shortcut is not None:
            plan.linear(module.conv_shortcut, f"{path}.conv_shortcut", out, in_idx)

    def attention(path, attn, t_idx, self_attention):
        heads = head_channels(attn, path)
        plan.linear(attn.to_q, f"{path}.to_q", heads, t_idx)
        kv_in = t_idx if self_attention else None
        plan.linear(attn.to_k, f"{path}.to_k", heads, kv_in)
        plan.linear(attn.to_v, f"{path}.to_v", heads, kv_in)
        plan.linear(attn.to_out[0], f"{path}.to_out.0", t_idx, heads)

    def transformer(path, module, channels):
        c_idx = stream(channels)
        inner_width = module.proj_in.weight.shape[0]
        t_idx = transformer_inner(path, inner_width)
        plan.norm(module.norm, f"{path}.norm", c_idx)
        plan.linear(module.proj_in, f"{path}.proj_in", t_idx, c_idx)
        for b, block in enumerate(module.transformer_blocks):
            if not isinstance(block, BasicTransformerBlock) or block.attn2 is None:
                raise ModelFormatError(f"UNet module {path}.transformer_blocks.{b}: not a cross-attention "
                                       "transformer block; only SD-style UNets can be sliced")
            bp = f"{path}.transformer_blocks.{b}"
            for norm_name in ("norm1", "norm2", "norm3"):
                plan.norm(getattr(block, norm_name), f"{bp}.{norm_name}", t_idx)
            attention(f"{bp}.attn1", block.attn1, t_idx, True)
            attention(f"{bp}.attn2", block.attn2, t_idx, False)
            ff = block.ff
            ff_inner = ff.net[2].in_features
            keep = inner("feed_forwards", f"{bp}.ff", ff_inner)
            plan.linear(ff.net[0].proj, f"{bp}.ff.net.0.proj", _cat(keep, ff_inner, keep, ff_inner), t_idx)
            plan.linear(ff.net[2], f"{bp}.ff.net.2", t_idx, keep)
        plan.linear(module.proj_out, f"{path}.proj_out", c_idx, t_idx)

    def check(path, got, expected):
        if got != expected:
            raise ModelFormatError(f"UNet module {path}: takes {got} channels, expected {expected}; "
                                   "only SD-style UNets (diffusers' down/mid/up blocks) can be sliced")

    current = unet.conv_in.out_channels
    plan.linear(unet.conv_in, "conv_in", stream(current), None)
    skips = [current]
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for j, (res, attn) in enumerate(zip(block.resnets, attentions)):
            check(f"down_blocks.{i}.resnets.{j}", res.conv1.in_channels, current)
            resnet(f"down_blocks.{i}.resnets.{j}", res, stream(current), res.out_channels)
            current = res.out_channels
            if attn is not None:
                transformer(f"down_blocks.{i}.attentions.{j}", attn, current)
            skips.append(current)
        for k, down in enumerate(block.downsamplers or []):
            plan.linear(down.conv, f"down_blocks.{i}.downsamplers.{k}.conv", stream(current), stream(current))
            skips.append(current)
    mid = unet.mid_block
    if mid is not None:
        resnet("mid_block.resnets.0", mid.resnets[0], stream(current), mid.resnets[0].out_channels)
        for j, (attn, res) in enumerate(zip(getattr(mid, "attentions", []), mid.resnets[1:])):
            transformer(f"mid_block.attentions.{j}", attn, current)
            resnet(f"mid_block.resnets.{j + 1}", res, stream(current), res.out_channels)
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for j, (res, attn) in enumerate(zip(block.resnets, attentions)):
            skip = skips.pop()
            path = f"up_blocks.{i}.resnets.{j}"
            check(path, res.conv1.in_channels, current + skip)
            resnet(path, res, _cat(stream(current), current, stream(skip), skip), res.out_channels)
            current = res.out_channels
            if attn is not None:
                transformer(f"up_blocks.{i}.attentions.{j}", attn, current)
        for k, up in enumerate(block.upsamplers or []):
            plan.linear(up.conv, f"up_blocks.{i}.upsamplers.{k}.conv", stream(current), stream(current))
    if unet.conv_norm_out is not None:
        plan.norm(unet.conv_norm_out, "conv_norm_out", stream(current))
    plan.linear(unet.conv_out, "conv_out", None, stream(current))
    return {k: v for k, v in plan.index.items() if any(ix is not None for ix in v)}


def slice_tensor(tensor, index: tuple):
    for dim, ix in enumerate(index):
        if ix is not None:
            tensor = tensor.index_select(dim, ix.to(tensor.device))
    return tensor


def apply_plan(unet, plan: dict[str, tuple]) -> None:
    """Physically slice ``unet`` in place (real smaller tensors) and fix every attribute diffusers reads."""
    import torch

    dim_heads = {name: m.inner_dim // m.heads for name, m in prunable_units(unet)["attention_heads"]}
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for name, index in plan.items():
            module_name, _, attr = name.rpartition(".")
            module = unet.get_submodule(module_name)
            setattr(module, attr, torch.nn.Parameter(slice_tensor(params[name].data, index).contiguous(),
                                                     requires_grad=params[name].requires_grad))
    _fix_attributes(unet, dim_heads)


def _fix_attributes(unet, dim_heads: dict[str, int]) -> None:
    import torch
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, torch.nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, torch.nn.GroupNorm) and m.weight is not None:
            m.num_channels = m.weight.shape[0]
            if m.num_channels % m.num_groups:
                raise InputError(f"UNet {name}: {m.num_channels} channels is not a multiple of its "
                                 f"{m.num_groups} GroupNorm groups")
        elif isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
            m.normalized_shape = (m.weight.shape[0],)
    for name, m in unet.named_modules():
        if isinstance(m, Attention) and name in dim_heads:
            inner = m.to_q.out_features
            m.heads = m.sliceable_head_dim = inner // dim_heads[name]
            m.inner_dim = m.inner_kv_dim = inner
            m.query_dim = m.to_q.in_features
            m.out_dim = m.to_out[0].out_features
        elif isinstance(m, ResnetBlock2D):
            m.in_channels, m.out_channels = m.conv1.in_channels, m.conv2.out_channels
        elif isinstance(m, (Downsample2D, Upsample2D)) and getattr(m, "conv", None) is not None:
            m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels
        elif isinstance(m, Transformer2DModel):
            m.in_channels, m.out_channels = m.proj_in.weight.shape[1], m.proj_out.weight.shape[0]
            m.inner_dim = m.proj_in.weight.shape[0]


def sliced_unet(unet, plan: dict[str, tuple]):
    """A physically sliced deep copy of ``unet`` (the original is left as it is)."""
    import copy

    small = copy.deepcopy(unet)
    apply_plan(small, plan)
    return small


def scaled_width(size: int, width: float, multiple: int, what: str) -> int:
    """``size * width`` rounded to the nearest positive multiple; an error when that would be zero."""
    if width >= 1.0:
        return size
    kept = int(round(size * width / multiple)) * multiple
    if kept <= 0:
        raise InputError(f"{what} would keep {size * width:.1f} of {size} channels, fewer than one multiple of "
                         f"{multiple} (8 and its GroupNorm groups)", param="width", value=f"{width:g}")
    return min(kept, size)


def scaled_heads(heads: int, width: float) -> int:
    return heads if width >= 1.0 else max(1, int(round(heads * width)))


def plan_for_width(unet, width: float, scope: str = "all") -> dict[str, tuple]:
    """Prefix plan of a slimmable UNet at ``width``: inner spaces, heads, transformer inner widths and the
    residual stream all keep the first ``round(width * size)`` channels (valid multiples)."""
    import torch

    stream_groups = unet.conv_norm_out.num_groups if unet.conv_norm_out is not None else 1
    stream_multiple = _group_multiple(stream_groups)

    def inner(kind, path, size):
        if kind == "attention_heads":
            kept = scaled_heads(size, width)
        else:
            kept = scaled_width(size, width, unit_multiple(unet, kind, path), f"{kind} '{path}'")
        return None if kept == size else torch.arange(kept)

    def stream(size):
        kept = scaled_width(size, width, stream_multiple, f"the residual stream ({size} channels)")
        return None if kept == size else torch.arange(kept)

    def transformer_inner(path, size):
        kept = scaled_width(size, width, CHANNEL_MULTIPLE, f"transformer '{path}'")
        return None if kept == size else torch.arange(kept)

    if scope == "inner":
        return build_plan(unet, inner)
    return build_plan(unet, inner, stream, transformer_inner)
