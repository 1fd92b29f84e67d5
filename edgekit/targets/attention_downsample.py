"""Key/value token downsampling in the UNet's highest-resolution self-attention (ToDo, Smith et al. 2024), an
export-time option of every target: training-free, it trades a measured fidelity cost for speed.

Self-attention over a latent of H x W tokens costs H*W x H*W score entries per head; at SD-1.5 size (64x64
latents) that is where most of an INT8 call's time goes (float attention, untouched by INT8 weights or width).
Here the hidden states that form the keys and values are average-pooled over the token grid by ``factor`` in
each direction (``factor**2`` fewer keys); the queries stay at full resolution, so the output keeps its shape.
Cross-attention (keys from the text) is left alone. Only the ``levels`` highest-resolution levels are touched
(level 0: the first down block and the last up block), where the token count is largest.

The change is inside the graph: a pooling op and a smaller attention, which every runtime runs (and the fused
MultiHeadAttention of the onnxruntime targets takes a key length different from the query's). The torch model
the export is checked against carries the same processors, so verification compares like with like; what the
approximation costs is measured against the float model by ``edgekit bench`` (reference fidelity).
"""
from __future__ import annotations

import math

from edgekit.errors import InputError


class PooledKeysAttnProcessor:
    """diffusers' scaled-dot-product attention with the key/value tokens average-pooled by ``factor`` over
    their (square) token grid; self-attention of 3-D hidden states only."""

    def __init__(self, factor: int) -> None:
        self.factor = int(factor)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        import torch.nn.functional as F

        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise RuntimeError("pooled keys: self-attention over 3-D hidden states only")
        batch, tokens, channels = hidden_states.shape
        side = math.isqrt(tokens)
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        grid = hidden_states.transpose(1, 2).reshape(-1, channels, side, side)
        pooled = F.avg_pool2d(grid, self.factor).flatten(2).transpose(1, 2)  # (batch, tokens / factor^2, channels)
        query, key, value = attn.to_q(hidden_states), attn.to_k(pooled), attn.to_v(pooled)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _level_blocks(unet, levels: int) -> list[tuple[str, object]]:
    """(name, block) of the UNet's ``levels`` highest-resolution levels: down blocks from the first, up blocks
    from the last (diffusers' UNet2DConditionModel mirrors its levels)."""
    down = list(unet.down_blocks)[:levels]
    up = list(unet.up_blocks)[len(unet.up_blocks) - levels:]
    return ([(f"down_blocks.{i}", b) for i, b in enumerate(down)]
            + [(f"up_blocks.{len(unet.up_blocks) - levels + i}", b) for i, b in enumerate(up)])


def self_attentions(unet, levels: int) -> list[tuple[str, object]]:
    """(module path, Attention) of every self-attention (a transformer block's ``attn1``) at those levels."""
    found = []
    for prefix, block in _level_blocks(unet, levels):
        for name, module in block.named_modules():
            if name.endswith("attn1") and type(module).__name__ == "Attention":
                found.append((f"{prefix}.{name}", module))
    return found


def check_downsample(unet, factor: int, levels: int, sample_size: int, param: str = "attention_downsample") -> None:
    """Refuse a factor the model cannot take: not a whole number >= 1, a latent grid it does not divide at a
    patched level, a non-square grid, or levels without self-attention."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError("expected a whole number >= 1 (1 = off; 2 pools each 2x2 patch of keys and values)",
                         param=param, value=factor)
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= len(unet.down_blocks):
        raise InputError(f"expected a whole number of resolution levels in 1..{len(unet.down_blocks)}",
                         param="attention_downsample_levels", value=levels)
    if factor == 1:
        return
    if not self_attentions(unet, levels):
        raise InputError(f"the UNet has no self-attention in its {levels} highest-resolution level(s)", param=param,
                         value=factor)
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise InputError(f"the latent grid {list(sample_size)} is not square (pooled keys need a square grid)",
                             param=param, value=factor)
        sample_size = sample_size[0]
    for level in range(levels):
        side = sample_size // (2 ** level)
        if side % factor:
            raise InputError(f"the {side}x{side} token grid at resolution level {level} is not divisible by it",
                             param=param, value=factor)


def downsample_keys(unet, factor: int, levels: int = 1) -> dict:
    """Point every self-attention at ``unet``'s ``levels`` highest-resolution levels at pooled keys (in place:
    ``unet`` is the export's own copy) and return what the manifest records."""
    patched = self_attentions(unet, levels) if factor > 1 else []
    for _, module in patched:
        module.set_processor(PooledKeysAttnProcessor(factor))
    return {"factor": factor, "levels": levels, "method": "average-pooled keys and values (ToDo)",
            "attentions": [name for name, _ in patched]}
