"""Per-layer widths of a compressed UNet as data: record them, check them, replay them on the base UNet.

diffusers' config cannot say "this resnet keeps 48 inner channels, that attention keeps 3 heads", so a
pruned or slimmable model carries ``structure.json`` next to ``model_index.json``. Loading builds the
base architecture from the unchanged ``unet/config.json``, slices it to the recorded widths and then
loads the (smaller) weights strictly, so a structure that does not match the weights is an error.

Three kinds of channel space can shrink without touching the residual stream, so skips stay valid:
a resnet's inner channels (conv1 out, norm2, time_emb_proj, conv2 in), a GEGLU feed-forward's inner
channels (both halves of net.0.proj, net.2 in) and an attention's heads (to_q/k/v rows, to_out
columns). A slimmable model additionally scales the residual stream and each transformer's inner width
at a width multiplier below 1, always keeping a prefix of every space. The slicing itself (walking the
UNet, index plans, applying them) is edgekit.unet_slicing.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import InputError, ModelFormatError
from edgekit.unet_slicing import apply_plan, build_plan, plan_for_width, unit_multiple, unit_sizes
from edgekit.width import FULL, Width, WidthError

STRUCTURE_FILE = "structure.json"
FORMAT_VERSION = 1
# "all": inner spaces, heads, transformer inner widths and the residual stream scale (width 0.5 ~ 0.28x MACs
# on the default model); "inner": only what pruning removes scales, block outputs keep their width.
WIDTH_SCOPES = ("all", "inner")


def _strict_keys(data: dict, allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ModelFormatError(f"{where}: unknown key '{key}'{hint}")


@dataclass(frozen=True)
class Structure:
    """Kept widths per layer (paths are UNet module names) and, for slimmable models, the offered widths."""

    resnets: dict = field(default_factory=dict)          # resnet path -> inner channels
    feed_forwards: dict = field(default_factory=dict)    # feed-forward path -> inner channels
    attention_heads: dict = field(default_factory=dict)  # attention path -> heads
    widths: tuple = ()                                   # slimmable width multipliers; () = not slimmable
    provenance: dict = field(default_factory=dict)       # how it was made (command, ratios, importance)
    format_version: int = FORMAT_VERSION
    width_scope: str = "all"                             # what a width < 1 shrinks: see WIDTH_SCOPES

    @property
    def slimmable(self) -> bool:
        return bool(self.widths)

    @property
    def trained(self) -> bool:
        """Whether the narrower widths of a slimmable model were trained: a slim that only ordered channels, or
        whose short training ended worse than it started and was given back, was not."""
        made = self.provenance
        if "trained" in made:
            return bool(made["trained"])
        return int(made.get("train_steps") or 0) > 0 or bool(made.get("continued_from"))

    @property
    def offered(self) -> tuple[Width, ...]:
        """The slimmable widths as Width values, narrowest first (as ``widths``)."""
        return tuple(sorted(Width.parse(w) for w in self.widths))

    @classmethod
    def from_dict(cls, data: dict, where: str = STRUCTURE_FILE) -> "Structure":
        if not isinstance(data, dict):
            raise ModelFormatError(f"{where}: expected a JSON object")
        _strict_keys(data, {"resnets", "feed_forwards", "attention_heads", "widths", "provenance",
                            "format_version", "width_scope"}, where)
        scope = data.get("width_scope", "all")
        if scope not in WIDTH_SCOPES:
            raise ModelFormatError(f"{where}: width_scope '{scope}' is not one of {', '.join(WIDTH_SCOPES)}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ModelFormatError(f"{where}: format_version {version} is not supported (expected {FORMAT_VERSION})")
        maps = {}
        for key in ("resnets", "feed_forwards", "attention_heads"):
            value = data.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(v, int) and v > 0 for v in value.values()):
                raise ModelFormatError(f"{where}: '{key}' must map layer names to positive whole numbers")
            maps[key] = dict(value)
        widths = data.get("widths", [])
        if not isinstance(widths, (list, tuple)) or not all(isinstance(w, (int, float)) for w in widths):
            raise ModelFormatError(f"{where}: 'widths' must be a list of numbers")
        for w in widths:
            try:
                Width.parse(w)
            except WidthError as exc:
                raise ModelFormatError(f"{where}: {exc}") from None
        if widths and FULL not in {Width.parse(w) for w in widths}:
            raise ModelFormatError(f"{where}: 'widths' must include 1.0")
        return cls(resnets=maps["resnets"], feed_forwards=maps["feed_forwards"],
                   attention_heads=maps["attention_heads"], widths=tuple(sorted(float(w) for w in widths)),
                   provenance=dict(data.get("provenance", {})), format_version=version, width_scope=scope)

    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "resnets": dict(self.resnets),
                "feed_forwards": dict(self.feed_forwards), "attention_heads": dict(self.attention_heads),
                "widths": list(self.widths), "width_scope": self.width_scope, "provenance": dict(self.provenance)}

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / STRUCTURE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> "Structure | None":
        """The structure of ``model_dir`` (a path or an edgekit.modeldir.ModelDir, which reads it once), else None."""
        from edgekit.modeldir import ModelDir

        model = model_dir if isinstance(model_dir, ModelDir) else ModelDir.unchecked(model_dir)
        return model.structure



def record(unet, widths=(), provenance: dict | None = None, width_scope: str = "all") -> Structure:
    sizes = unit_sizes(unet)
    return Structure(sizes["resnets"], sizes["feed_forwards"], sizes["attention_heads"], tuple(sorted(widths)),
                     dict(provenance or {}), width_scope=width_scope)


# ---------------------------------------------------------------------------------------------------------
# Structures: validate against a base UNet, replay, and pick a width.

def validate(unet, structure: Structure, where: str = STRUCTURE_FILE) -> None:
    """Raise ModelFormatError unless every recorded width exists in ``unet`` and can be kept."""
    sizes = unit_sizes(unet)
    for kind in ("resnets", "feed_forwards", "attention_heads"):
        unknown = set(getattr(structure, kind)) - set(sizes[kind])
        if unknown:
            raise ModelFormatError(f"{where}: {kind} {sorted(unknown)[:3]} are not layers of this UNet")
        for path, kept in getattr(structure, kind).items():
            full = sizes[kind][path]
            multiple = unit_multiple(unet, kind, path)
            if kept > full or kept % multiple:
                raise ModelFormatError(f"{where}: {kind} '{path}' keeps {kept} of {full}; expected at most {full} "
                                       f"and a multiple of {multiple}")


def replay(unet, structure: Structure) -> None:
    """Slice a base-architecture UNet to the recorded widths (keeping prefixes: the saved weights are
    already the kept ones, in order), so that the saved state dict loads into it strictly."""
    import torch

    validate(unet, structure)
    recorded = {**{("resnets", p): n for p, n in structure.resnets.items()},
                **{("feed_forwards", p): n for p, n in structure.feed_forwards.items()},
                **{("attention_heads", p): n for p, n in structure.attention_heads.items()}}

    def inner(kind, path, size):
        kept = recorded.get((kind, path), size)
        return None if kept == size else torch.arange(kept)

    apply_plan(unet, build_plan(unet, inner))


def check_widths(unet, widths, scope: str = "all") -> None:
    """Raise InputError naming the first width that cannot be sliced validly."""
    from edgekit.config import widths_param

    for w in widths_param(widths):
        try:
            plan_for_width(unet, float(w), scope)
        except InputError as exc:  # the width being checked is one of a list
            raise InputError(exc.detail, param="widths", value=str(w)) from None


def unet_macs(unet, sample_shape=None, tokens: int | None = None) -> int:
    """Multiply-accumulates of one UNet call at batch 1 (convolutions, linears and attention matmuls)."""
    import torch
    from diffusers.models.attention_processor import Attention

    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    sample_shape = sample_shape or (1, cfg.in_channels, size, size)
    tokens = tokens or 77
    total = [0]

    def count(m, args, kwargs, out):
        if isinstance(m, torch.nn.Conv2d):
            total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total[0] += out.numel() * m.in_features
        elif isinstance(m, Attention):
            hs = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states")
            length = hs.shape[1] if hs.ndim == 3 else hs.shape[2] * hs.shape[3]
            ctx_len = ctx.shape[1] if ctx is not None else length
            total[0] += 2 * hs.shape[0] * length * ctx_len * m.inner_dim  # scores and weighted sum

    handles = [m.register_forward_hook(count, with_kwargs=True) for m in unet.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, Attention))]
    try:
        with torch.no_grad():
            unet(torch.zeros(sample_shape), torch.tensor([1.0]), torch.zeros(1, tokens, cfg.cross_attention_dim))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def load_structured_unet(unet_dir: Path, structure: Structure, config: dict | None = None):
    """Build the base UNet from its config (``config``: the parsed config.json, as edgekit.modeldir read it;
    None: read from ``unet_dir``), replay ``structure`` on it and load the weights strictly (float32); a
    structure that does not match the weights is a ModelFormatError."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    unet_dir = Path(unet_dir)
    try:
        config = UNet2DConditionModel.load_config(unet_dir) if config is None else config
        unet = UNet2DConditionModel.from_config(config)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelFormatError(f"{unet_dir}: could not build the UNet from its config ({exc})") from None
    replay(unet, structure)
    weights = sorted(unet_dir.glob("*.safetensors"))
    if not weights:
        raise ModelFormatError(f"{unet_dir}: no safetensors weights (a structured model stores them as safetensors)")
    state = {k: v.to(torch.float32) for k, v in load_file(str(weights[0])).items()}
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, structure says {tuple(expected[wrong[0]].shape)}"
                  if wrong else f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}")
        raise ModelFormatError(f"{unet_dir.parent / STRUCTURE_FILE}: does not match the UNet weights ({detail})")
    unet.load_state_dict(state, strict=True)
    return unet.eval()


def select_width(unet, structure: Structure, width: float, model_dir: Path) -> None:
    """Slice a loaded slimmable UNet in place to one of its offered widths."""
    if not structure.slimmable:
        raise InputError(f"{model_dir} is a pruned model, not a slimmable one (its structure.json offers no "
                         "widths); make one with edgekit slim", param="width", value=f"{width:g}")
    if Width.parse(width) not in structure.offered:
        raise InputError(f"{model_dir} offers widths {', '.join(str(w) for w in structure.offered)}",
                         param="width", value=f"{width:g}")
    if float(width) < 1.0:
        apply_plan(unet, plan_for_width(unet, float(width), structure.width_scope))
