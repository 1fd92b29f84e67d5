"""Export-time rewrites, scoped: pure functions returning a new module, and context managers that undo
themselves. The user's model is never edited. Each rewrite computes the same function (tested for
numerical equivalence in tests/test_export_patches.py); which target uses which is listed in
``PATCHES_BY_ROUTE``.

- ``decompose_group_norm``: nn.GroupNorm -> reshape/mean/var arithmetic. onnx2tf cannot convert the
  InstanceNormalization form that torch.onnx gives GroupNorm.
  With ``layer_norm=True`` also single-axis nn.LayerNorm (onnx2tf fails on LayerNormalization).
- ``batched_timestep``: the UNet's time embedding without its ``timestep.expand(batch)``; the spec
  already feeds one timestep per row, and onnx2tf cannot map the Expand once the batch is pinned.
- ``erf_free_gelu``: exact GELU with erf written as a polynomial in exp (Abramowitz & Stegun 7.1.26,
  |error| < 1.5e-7), because TFLite has no builtin Erf and onnx2tf otherwise emits a FlexErf op that
  the stock LiteRT interpreter refuses.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

PATCHES_BY_ROUTE = {
    "onnx2tf": ("decompose_group_norm", "batched_timestep", "erf_free_gelu"),
    "litert-torch": (),
    "ort-web": (),
    "coreml": (),
}


class DecomposedGroupNorm(nn.Module):
    """GroupNorm as elementary ops (reshape, mean, variance, rsqrt): the same numbers, friendlier graphs."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.affine = norm.affine
        if norm.affine:
            self.weight = nn.Parameter(norm.weight.detach().clone())
            self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        grouped = x.reshape(n, self.num_groups, -1)
        mean = grouped.mean(dim=-1, keepdim=True)
        var = ((grouped - mean) ** 2).mean(dim=-1, keepdim=True)
        y = ((grouped - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


class DecomposedLayerNorm(nn.Module):
    """LayerNorm over the last axis as mean/variance/rsqrt (onnx2tf fails on LayerNormalization here)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().clone()) if norm.weight is not None else None
        self.bias = nn.Parameter(norm.bias.detach().clone()) if norm.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def decompose_group_norm(module: nn.Module, layer_norm: bool = False) -> nn.Module:
    """A copy of ``module`` with every nn.GroupNorm (and, if asked, single-axis nn.LayerNorm) replaced
    by its elementary-op form."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.GroupNorm):
                setattr(child, attr, DecomposedGroupNorm(sub))
            elif layer_norm and isinstance(sub, nn.LayerNorm) and len(sub.normalized_shape) == 1:
                setattr(child, attr, DecomposedLayerNorm(sub))
    return module


def _time_embed_per_row(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    return self.time_proj(timestep).to(dtype=sample.dtype)


def batched_timestep(module: nn.Module) -> nn.Module:
    """``module`` (a copy is the caller's business) with every diffusers UNet taking a (batch,) timestep
    as is, instead of expanding it to the batch inside the graph."""
    import types

    for sub in module.modules():
        if type(sub).__name__ == "UNet2DConditionModel":
            sub.get_time_embed = types.MethodType(_time_embed_per_row, sub)
    return module


_AS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_P = 0.3275911


def erf_polynomial(x: torch.Tensor) -> torch.Tensor:
    """erf(x) within 1.5e-7 using only abs, exp, mul, add, div and sign (all TFLite builtins)."""
    sign = torch.sign(x)
    a = torch.abs(x)
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_AS[0] + t * (_AS[1] + t * (_AS[2] + t * (_AS[3] + t * _AS[4]))))
    return sign * (1.0 - poly * torch.exp(-a * a))


def gelu_without_erf(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate == "tanh":
        return _original_gelu(x, approximate="tanh")
    return 0.5 * x * (1.0 + erf_polynomial(x / math.sqrt(2.0)))


_original_gelu = F.gelu


@contextmanager
def erf_free_gelu() -> Iterator[None]:
    """Within the block, torch.nn.functional.gelu (what diffusers' GELU/GEGLU and transformers' GELU
    call at run time) computes exact GELU without an Erf op; restored on exit."""
    F.gelu = gelu_without_erf
    try:
        yield
    finally:
        F.gelu = _original_gelu


def _rebind_transformers_gelu(module: nn.Module) -> None:
    """transformers' GELUActivation keeps a reference to F.gelu taken at construction; point it at the
    patched function (on a copy only)."""
    for sub in module.modules():
        if type(sub).__name__ == "GELUActivation" and getattr(sub, "act", None) is _original_gelu:
            sub.act = gelu_without_erf


@contextmanager
def onnx2tf_friendly(module: nn.Module) -> Iterator[nn.Module]:
    """A patched copy of ``module`` for the onnx2tf route; the original is left untouched."""
    patched = batched_timestep(decompose_group_norm(module, layer_norm=True))
    _rebind_transformers_gelu(patched)
    with erf_free_gelu():
        yield patched.eval()
