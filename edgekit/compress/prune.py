"""Structured pruning of a pipeline's UNet (resnet inner channels, GEGLU inner channels, whole attention
heads) and writing the result as a diffusers directory plus structure.json.

Own code rather than Torch-Pruning's DepGraph: the three prunable spaces are closed inside one module each
(conv1->norm2->conv2, GEGLU proj halves->net.2, to_q/k/v heads->to_out), so no dependency graph is needed,
while diffusers' Attention and Transformer2DModel keep derived attributes (heads, inner_dim, ...) that a
generic tracer does not update; and the same walker (edgekit.structure) must replay a structure.json and
slice slimmable widths at load time, which DepGraph's pickled history would not give as plain data.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.config import check_keys
from edgekit.errors import InputError
from edgekit.modeldir import UNET

REPORT_FILE = "compress_report.json"


@dataclass(frozen=True)
class PruneConfig:
    ratio: float
    heads_ratio: float | None = None  # None: the same as ratio
    importance: str = "l1"
    recover_steps: int = 0
    recover_lr: float = 1e-4
    batch_size: int = 16
    feature_weight: float = 0.5
    seed: int = 0

    def __post_init__(self):
        from edgekit.compress.importance import METHODS

        if not 0.0 < float(self.ratio) < 1.0:
            raise InputError("expected a fraction of channels to remove in (0, 1)", param="ratio", value=self.ratio)
        if self.heads_ratio is not None and not 0.0 <= float(self.heads_ratio) < 1.0:
            raise InputError("expected a fraction of heads to remove in [0, 1)", param="heads_ratio",
                             value=self.heads_ratio)
        if self.importance not in METHODS:
            raise InputError(f"expected one of {', '.join(METHODS)}", param="importance", value=self.importance)
        if self.recover_steps < 0:
            raise InputError("expected a whole number >= 0", param="recover_steps", value=self.recover_steps)
        if not self.recover_lr > 0:
            raise InputError("expected a positive number", param="recover_lr", value=self.recover_lr)

    @property
    def effective_heads_ratio(self) -> float:
        return float(self.ratio if self.heads_ratio is None else self.heads_ratio)

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        check_keys(data, cls)
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def kept_count(kind: str, size: int, ratio: float, multiple: int, path: str) -> int:
    """Channels (or heads) kept when removing ``ratio`` of ``size``: a positive multiple of ``multiple``."""
    if kind == "attention_heads":
        kept = int(round(size * (1.0 - ratio)))
        if kept < 1:
            raise InputError(f"would leave no head in '{path}' ({size} heads)", param="heads_ratio",
                             value=f"{ratio:g}")
        return kept
    kept = int(round(size * (1.0 - ratio) / multiple)) * multiple
    if kept <= 0:
        raise InputError(f"would leave no channel in '{path}' ({size} channels, kept widths must be multiples "
                         f"of {multiple})", param="ratio", value=f"{ratio:g}")
    return min(kept, size)


def prune_unet(unet, config: PruneConfig, rows: dict | None = None):
    """Return (pruned physically sliced copy of ``unet``, kept indices per unit)."""
    import torch

    from edgekit.compress.importance import importance_scores
    from edgekit.unet_slicing import build_plan, prunable_units, sliced_unet, unit_multiple

    units = prunable_units(unet)
    if config.effective_heads_ratio > 0 and not units["attention_heads"]:
        raise InputError("the UNet has no attention layers, so there are no heads to prune (0 prunes channels "
                         "only)", param="heads_ratio", value=f"{config.effective_heads_ratio:g}")
    scores = importance_scores(unet, config.importance, rows, seed=config.seed)
    kept: dict[str, list[int]] = {}

    def inner(kind, path, size):
        ratio = config.effective_heads_ratio if kind == "attention_heads" else float(config.ratio)
        if ratio <= 0:
            return None
        keep = kept_count(kind, size, ratio, unit_multiple(unet, kind, path), path)
        score = scores[f"{kind}:{path}"]
        if kind == "resnets":
            # keep the same number of channels in each GroupNorm group, so every new group is a subset of
            # an old one and the normalisation statistics stay close to the teacher's
            groups = unet.get_submodule(path).norm2.num_groups
            per = score.reshape(groups, -1)
            top = torch.topk(per, keep // groups, dim=1).indices.sort(dim=1).values
            idx = (top + torch.arange(groups)[:, None] * per.shape[1]).reshape(-1)
        else:
            idx = torch.topk(score, keep).indices.sort().values
        kept[f"{kind}:{path}"] = idx.tolist()
        return idx

    plan = build_plan(unet, inner)
    return sliced_unet(unet, plan), kept


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def write_structured_model(source_dir: Path, out_dir: Path, unet, structure) -> None:
    """Copy ``source_dir`` into ``out_dir`` (a staging directory) with ``unet``'s weights (in the source's
    storage dtype) and ``structure.json``; the unet config stays the base architecture's."""
    import torch
    from safetensors.torch import load_file, save_file

    from edgekit.constants import MANIFEST
    from edgekit.fsutil import link_or_copy_tree
    from edgekit.structure import STRUCTURE_FILE

    # unchanged components as hard links (else copies); the UNet's weight files are unlinked and written anew
    link_or_copy_tree(source_dir, out_dir, skip_top=(MANIFEST, STRUCTURE_FILE, REPORT_FILE))
    unet_dir = out_dir / UNET
    existing = sorted(unet_dir.glob("*.safetensors")) + sorted(unet_dir.glob("*.bin"))
    dtype = torch.float32
    if existing and existing[0].suffix == ".safetensors":
        first = next(iter(load_file(str(existing[0])).values()), None)
        dtype = first.dtype if first is not None else torch.float32
    for path in existing:
        path.unlink()
    state = {k: v.detach().to(dtype).contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(unet_dir / "diffusion_pytorch_model.safetensors"))
    structure.save(out_dir)


def check_reload(out_dir: Path, unet, width=None, scope: str = "all", tolerance: float = 2e-2) -> float:
    """Load ``out_dir`` through edgekit (at ``width`` of a slimmable model; None: as it is) and compare its UNet
    with the in-memory ``unet`` (sliced to that width) on a fixed input; the relative error, or a
    VerificationError above ``tolerance``."""
    import torch

    from edgekit.errors import VerificationError
    from edgekit.pipeline import load_pipeline
    from edgekit.unet_slicing import plan_for_width, sliced_unet
    from edgekit.width import Width

    width = None if width is None else Width.parse(width)
    expected = unet if width is None or width.is_full else sliced_unet(unet, plan_for_width(unet, float(width), scope))
    reloaded = load_pipeline(out_dir, width=None if width is None else float(width)).unet
    cfg = unet.config
    gen = torch.Generator().manual_seed(0)
    height, breadth = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else cfg.sample_size
    x = torch.randn(2, cfg.in_channels, height, breadth, generator=gen)
    ctx = torch.randn(2, 8, cfg.cross_attention_dim, generator=gen)
    t = torch.tensor([500.0, 20.0])
    with torch.no_grad():
        a = expected.eval()(x, t, ctx).sample
        b = reloaded(x, t, ctx).sample
    err = float((a - b).norm() / a.norm().clamp_min(1e-12))
    if err > tolerance:
        at = "" if width is None else f" at width {width}"
        raise VerificationError(f"{out_dir}: the UNet{at} reloads with relative error {err:.3g} > {tolerance} "
                                "against the one written")
    return err


def prune_model(model_dir: Path, config: PruneConfig, out: Path, calib_dir: Path | None = None,
                progress=None) -> dict:
    """Prune ``model_dir``'s UNet, optionally recover it by distillation, and write ``out`` atomically."""
    import time

    import torch

    from edgekit.compress.distill import frozen_copy, is_main_process, recover
    from edgekit.compress.training_rows import calibration_rows
    from edgekit.fsutil import staged_dir
    from edgekit.progress import working
    from edgekit.pipeline import load_pipeline
    from edgekit.structure import record, unet_macs

    torch.manual_seed(config.seed)
    pipe = load_pipeline(model_dir)
    base = pipe.unet
    needs_rows = config.importance != "l1" or config.recover_steps > 0
    rows = calibration_rows(pipe, model_dir, calib_dir, seed=config.seed) if needs_rows else None
    started = time.perf_counter()
    pruned, kept = prune_unet(base, config, rows)
    prune_seconds = time.perf_counter() - started
    recovery = recover(pruned, frozen_copy(base), rows, config.recover_steps, config.recover_lr,
                       config.batch_size, config.feature_weight, config.seed, progress) if config.recover_steps else {}
    pruned.eval().requires_grad_(False)
    structure = record(pruned, provenance={"command": "prune", "source": str(model_dir), **config.to_dict()})
    report = {
        "out": str(out), "config": config.to_dict(),
        "params": {"before": count_params(base), "after": count_params(pruned)},
        "unet_macs": {"before": unet_macs(base), "after": unet_macs(pruned)},
        "prune_seconds": round(prune_seconds, 2), "recovery": recovery,
        "structure": {k: v for k, v in structure.to_dict().items() if k != "provenance"},
    }
    if not is_main_process():  # the other processes of a launch group trained the same weights
        return report
    with staged_dir(out) as staging, working("prune: write the model and reload it"):
        write_structured_model(model_dir, staging, pruned, structure)
        report["reload_relative_error"] = check_reload(staging, pruned)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
