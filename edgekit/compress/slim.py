"""Slimmable widths: reorder a UNet's channels and heads by importance so that every prefix keeps the
important ones, fine-tune with the sandwich rule and in-place distillation, and write one weight set plus
a structure.json listing the widths that ``load_pipeline(dir, width=w)`` slices to.

At width w every channel space keeps its first round(w * size) channels (valid multiples): resnet inner
channels, GEGLU inner channels and heads (ordered by importance here), and also the residual stream and
each transformer's inner width (natural order; they are shared by many layers). Scaling the stream too is
what brings width 0.5 near 0.25x the MACs: shrinking only inner spaces leaves every conv that reads or
writes the stream at half cost, about 0.58x in total on the default model.

Training's memory: ``memory="standard"`` trains the whole batch at once with AdamW beside the frozen teacher;
``"lean"`` (edgekit.compress.distill) computes the teacher's outputs first and releases it, runs one row and
its empty-prompt twin per pass with the UNet's blocks recomputed in the backward pass, and uses Adafactor:
what lets a few steps run at SD-1.5's size on a 24 GB host. ``"auto"`` (the default) is standard when its
measured line fits the available memory, else lean when that fits (the report says so in one line).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edgekit.config import check_keys, widths_param
from edgekit.errors import InputError
from edgekit.modeldir import UNET
from edgekit.unet_layout import UNetLayout, unet_layout
from edgekit.width import FULL

MEMORY_CHOICES = ("auto", "standard", "lean")


@dataclass(frozen=True)
class SlimConfig:
    widths: tuple = (0.5, 0.75, 1.0)
    train_steps: int = 0
    importance: str = "l1"
    lr: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    full_weight: float = 1.0
    scope: str = "all"
    guidance_weight: float = 1.0
    memory: str = "auto"

    def __post_init__(self):
        from edgekit.compress.importance import METHODS
        from edgekit.structure import WIDTH_SCOPES

        if self.scope not in WIDTH_SCOPES:
            raise InputError(f"expected one of {', '.join(WIDTH_SCOPES)}", param="scope", value=self.scope)
        if not self.guidance_weight >= 0:
            raise InputError("expected a number >= 0", param="guidance_weight", value=self.guidance_weight)
        if not self.full_weight > 0:
            raise InputError("expected a positive number", param="full_weight", value=self.full_weight)
        if not self.lr > 0:
            raise InputError("expected a positive number", param="lr", value=self.lr)
        widths = widths_param(self.widths)
        if FULL not in widths:
            raise InputError("must include 1.0 (the full width the others distil from)", param="widths",
                             value=",".join(str(w) for w in widths))
        if self.train_steps < 0:
            raise InputError("expected a whole number >= 0", param="train_steps", value=self.train_steps)
        if self.memory not in MEMORY_CHOICES:
            raise InputError(f"expected one of {', '.join(MEMORY_CHOICES)}", param="memory", value=self.memory)
        if self.importance not in METHODS:
            raise InputError(f"expected one of {', '.join(METHODS)}", param="importance", value=self.importance)
        object.__setattr__(self, "widths", tuple(sorted(float(w) for w in widths)))

    @classmethod
    def from_dict(cls, data: dict) -> "SlimConfig":
        check_keys(data, cls)
        return cls(**{**data, "widths": tuple(data.get("widths", cls.widths))})

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @property
    def needs_rows(self) -> bool:
        """Whether the run reads calibration rows (training, or a data-driven channel importance)."""
        return self.importance != "l1" or self.train_steps > 0


def order_by_importance(unet, scores: dict):
    """A copy of ``unet`` with inner channels and heads permuted, most important first. The full-width
    function is unchanged: resnet channels move with their GroupNorm group (whole groups ordered by total
    score, channels inside a group by their own), so every prefix of groups is a valid GroupNorm space."""
    import torch

    from edgekit.compress.importance import group_balanced_order
    from edgekit.unet_slicing import build_plan, sliced_unet

    def inner(kind, path, size):
        score = scores[f"{kind}:{path}"]
        if kind == "resnets":
            return group_balanced_order(score, unet.get_submodule(path).norm2.num_groups)[0]
        return torch.argsort(score, descending=True, stable=True)

    return sliced_unet(unet, build_plan(unet, inner))


def width_table(unet, widths, scope: str = "all") -> list[dict]:
    from edgekit.compress.prune import count_params
    from edgekit.structure import unet_macs
    from edgekit.unet_slicing import plan_for_width, sliced_unet

    full_macs = unet_macs(unet)
    rows = []
    for w in sorted(widths):
        small = sliced_unet(unet, plan_for_width(unet, w, scope)) if w < 1.0 else unet
        macs = unet_macs(small)
        rows.append({"width": w, "params": count_params(small), "unet_macs": macs, "macs_ratio": macs / full_macs})
    return rows


def check_widths_reload(out_dir: Path, unet, widths, scope: str = "all") -> dict:
    """Every width of the written model loads through edgekit and matches the in-memory slice (by width)."""
    from edgekit.compress.prune import check_reload
    from edgekit.width import Width

    return {str(w): check_reload(out_dir, unet, w, scope) for w in sorted(Width.parse(v) for v in widths)}


# Peak resident memory of slim_model on CPU, measured on UNets of SD-1.5's layout (channels x 0.2 and x 0.4) with
# widths 0.5,1.0 (benchmarks/realsize_slim_memory.py, results in benchmarks/results/realsize_slim_memory.md).
# "order" (no training, l1 importance: load, order, write, reload every width): intercept bytes + bytes per
# UNet parameter, the least-squares line at 64x64 latents. "train" (standard sandwich steps) and "lean" (the
# lean memory mode's steps): intercept + bytes per parameter + bytes per activation unit, solved from batch-1
# runs at 64x64 and 32x32 latents (lean: the peak over its teacher-output and training phases; 13.5 GB at
# 860M, against 26 GB for standard's batch 1). Activations grow with channels and latent area, not with
# parameters (which grow with channels squared), so a line over parameters alone, extrapolated from small
# scales, would overstate them; one activation unit is one pass of a prompted row and its empty-prompt twin,
# at full width and at width 0.5, through a UNet with SD-1.5's 320 first-block channels at 64x64 latents.
MEMORY_FIT = {"order": (521 * 2**20, 14.8), "train": (538 * 2**20, 23.7, 6673 * 2**20),
              "lean": (583 * 2**20, 14.25, 1553 * 2**20)}
MEMORY_RESULTS = "benchmarks/results/realsize_slim_memory.md"


def _activation_units(layout: UNetLayout, config: SlimConfig, memory: str = "standard") -> float:
    """Activation units (see MEMORY_FIT) of one pass: rows per pass x channel scale x latent area, and the
    narrower widths run beside the full one (their activations scale with the width). The lean mode passes
    one prompted row (and its twin) at a time, whatever the batch."""
    scale = layout.first_channels / 320 * layout.height * layout.width / 64**2
    if not config.train_steps:  # data importance: one backward over 16 rows at full width (a unit holds 3)
        return scale * 16 / 3
    narrower = [w for w in config.widths if w < 1.0]
    widths = 1.0 + (narrower[0] if narrower else 0.0) + (max(narrower[1:]) if len(narrower) > 1 else 0.0)
    rows = 1 if memory == "lean" else config.batch_size
    return scale * rows * widths / 1.5


def _capture_samples(config: SlimConfig) -> int:
    # Distillation memorises few trajectories: after 5000 steps on 8k rows from 220 images the full width
    # matched its teacher to 0.08% on those rows but 2% on fresh ones (and lost 5 points of accuracy), so
    # long runs capture many more images (about one row per training sample) when no --calib is given.
    return min(1500, max(22, config.train_steps * config.batch_size // 40))


def _max_rows(samples: int) -> int:
    return max(512, min(60000, samples * 40))


def _rows_bytes(layout: UNetLayout, rows: int, teacher_rows: int = 0) -> int:
    """Memory of ``rows`` UNet input rows held for training (float32 sample, timestep and text states, plus
    the prompted rows' copy the training set takes), and of the lean mode's teacher outputs for
    ``teacher_rows`` prompted rows (each with its twin's)."""
    latent = layout.in_channels * layout.height * layout.width
    per_row = 4 * (latent + 77 * layout.cross_attention_dim + 1)
    return 2 * rows * per_row + 2 * teacher_rows * 4 * latent


def _memory_line(config: SlimConfig, memory: str = "standard") -> str:
    # a data-driven importance runs backward passes over calibration rows like a training step does
    if not config.train_steps:
        return "order" if config.importance == "l1" else "train"
    return "lean" if memory == "lean" else "train"


def estimate_memory(config: SlimConfig, params: int, rows_bytes: int = 0, activation_units: float = 0.0,
                    memory: str = "standard") -> int:
    """Estimated peak resident bytes of slim_model's training (or ordering) for a UNet of ``params``
    parameters (the measured fit of ``memory``'s line)."""
    line = _memory_line(config, memory)
    if line == "order":
        intercept, per_param = MEMORY_FIT["order"]
        return int(intercept + per_param * params)
    intercept, per_param, per_unit = MEMORY_FIT[line]
    return int(intercept + per_param * params + per_unit * activation_units + (rows_bytes if config.train_steps else 0))


def _estimate(layout: UNetLayout, params: int, config: SlimConfig, memory: str, calib_dir: Path | None) -> dict:
    """The estimate of one run and the parts its refusal names: the largest of its training, its data-driven
    importance (run before training, unchanged in the lean mode) and the untrained work around them (every
    run loads, orders, writes and reloads each width; the lean training can need less than that)."""
    rows = 0
    if config.train_steps and calib_dir is None:  # captured now: the row count is known in advance
        captured = _max_rows(_capture_samples(config))
        teacher = min(captured // 2, config.train_steps * config.batch_size) if memory == "lean" else 0
        rows = _rows_bytes(layout, captured, teacher)
    units = _activation_units(layout, config, memory)
    line = _memory_line(config, memory)
    what = " in the lean memory mode" if line == "lean" else ""
    candidates = [{"bytes": estimate_memory(config, params, rows, units, memory), "line": line, "units": units,
                   "rows": rows, "what": what}]
    if memory == "lean" and config.train_steps and config.importance != "l1":
        importance = replace(config, train_steps=0)
        units = _activation_units(layout, importance)
        candidates.append({"bytes": estimate_memory(importance, params, 0, units), "line": "train", "units": units,
                           "rows": 0, "what": f", its {config.importance} importance run before the lean training"})
    untrained = replace(config, train_steps=0, importance="l1")
    candidates.append({"bytes": estimate_memory(untrained, params), "line": "order", "units": 0.0, "rows": 0,
                       "what": ", to load, order, write and reload its widths" if config.train_steps else ""})
    return max(candidates, key=lambda c: c["bytes"])


def _described(estimate: dict, params: int) -> str:
    intercept, per_param, *per_unit = MEMORY_FIT[estimate["line"]]
    activations = f" + {per_unit[0] * estimate['units'] / 2**30:.1f} GB of activations" if per_unit else ""
    rows = f" + {estimate['rows'] / 2**30:.1f} GB of calibration rows" if estimate["rows"] else ""
    return (f"needs about {estimate['bytes'] / 2**30:.1f} GB for the {params / 1e6:.0f}M-parameter UNet"
            f"{estimate['what']} (measured {intercept / 2**20:.0f} MB + {per_param:.1f} bytes per parameter"
            f"{activations}{rows}, "
            f"{MEMORY_RESULTS})")


def check_memory(model_dir: Path, config: SlimConfig, calib_dir: Path | None = None,
                 section: str | None = None) -> dict | None:
    """The memory mode a run of ``config`` takes: ``config.memory``, or for "auto" standard when its measured
    line fits the memory available now, else lean when that fits. Raise InputError (one line: the estimate,
    the measured line it comes from, what is available and what would fit) when no allowed mode fits.
    Reads the UNet's parameter count from its weight files' headers (nothing loaded); None when that count is
    unknown. On a machine with a GPU the training runs there, so only the host's share (the no-training
    line) is checked. ``section``: the name the caller's config gives these fields' group ("slim" in a
    package config): the error then names them "slim.train_steps" and so on."""
    import torch

    from edgekit.quantize.memory import available_bytes, component_params

    params = component_params(model_dir, UNET)
    if not params:
        return None
    layout = unet_layout(model_dir)
    untrained = replace(config, train_steps=0, importance="l1")
    on_cpu = not torch.cuda.is_available()
    run = config if on_cpu else untrained
    modes = ["standard", "lean"] if config.memory == "auto" else [config.memory]
    if not run.train_steps or not on_cpu:
        modes = modes[:1]
    free = available_bytes()
    estimate = None
    for memory in modes:
        estimate = _estimate(layout, params, run, memory, calib_dir)
        if estimate["bytes"] <= free:
            record = {"params": params, "estimated_peak_bytes": estimate["bytes"], "available_bytes": free,
                      "memory": memory}
            if memory != modes[0]:
                standard = _estimate(layout, params, run, modes[0], calib_dir)["bytes"]
                record["memory_note"] = (f"training in the lean memory mode: the standard one needs about "
                                         f"{standard / 2**30:.1f} GB, {free / 2**30:.1f} GB available (lean: about "
                                         f"{estimate['bytes'] / 2**30:.1f} GB)")
            return record
    name = (lambda field: f"{section}.{field}") if section else (lambda field: field)
    need = f"{_described(estimate, params)}, {free / 2**30:.1f} GB available"
    for changes, what in _alternatives(config) if run is config else ():
        alternative = replace(config, **changes)
        cost = min(_estimate(layout, params, alternative, memory, calib_dir)["bytes"]
                   for memory in (["standard", "lean"] if alternative.memory == "auto" else [alternative.memory]))
        if cost <= free:
            fits = " ".join("{" + name(field) + "} " + str(value) for field, value in changes.items())
            subject = "train_steps" if config.train_steps else "importance"
            raise InputError(f"{need}; {fits} fits (about {cost / 2**30:.1f} GB: {what})",
                             mentions=tuple(name(field) for field in changes), param=name(subject),
                             value=getattr(config, subject))
    raise InputError(f"{need}; use a machine with more memory", param="model_dir", value=model_dir)


def _alternatives(config: SlimConfig) -> list:
    """(changed fields, what the run then does) a refusal may name, most training kept first."""
    out = []
    if config.train_steps:
        lean = {"memory": "lean"} if config.memory == "standard" else {}
        if lean:
            out.append((lean, "the lean memory mode"))
        if config.importance != "l1":
            out.append(({**lean, "importance": "l1"}, "the lean memory mode, channels ordered by weight norms"))
    untrained = {"train_steps": 0, **({"importance": "l1"} if config.importance != "l1" else {})}
    if config.train_steps or config.importance != "l1":
        out.append((untrained, "channels ordered by weight norms and the widths written, untrained"))
    return out


def slim_model(model_dir: Path, config: SlimConfig, out: Path, calib_dir: Path | None = None,
               progress=None, init_dir: Path | None = None) -> dict:
    """Make ``model_dir``'s UNet slimmable at ``config.widths`` and write ``out`` atomically.
    ``init_dir``: an earlier slim output of the same model to continue training from (its channel order
    is kept; the teacher is still ``model_dir``'s UNet)."""
    import torch

    from edgekit.compress.distill import is_main_process, train_slimmable
    from edgekit.compress.training_rows import TeacherOutputs, calibration_rows
    from edgekit.compress.importance import importance_scores
    from edgekit.compress.prune import REPORT_FILE, write_structured_model
    from edgekit.fsutil import staged_dir
    from edgekit.progress import working
    from edgekit.pipeline import load_pipeline
    from edgekit.structure import check_widths, record

    checked = check_memory(model_dir, config, calib_dir)  # a run that cannot fit is refused before loading anything
    memory = checked["memory"] if checked else ("standard" if config.memory == "auto" else config.memory)
    torch.manual_seed(config.seed)
    pipe = load_pipeline(model_dir)
    if pipe.edgekit_structure is not None and pipe.edgekit_structure.slimmable:
        raise InputError(f"is already slimmable (widths {', '.join(str(w) for w in pipe.edgekit_structure.offered)}); "
                         "slim its source instead", param="model_dir", value=model_dir)
    base = pipe.unet
    check_widths(base, config.widths, config.scope)
    earlier = _continued(init_dir, base, config) if init_dir is not None else None  # before any long work
    samples = _capture_samples(config)
    rows = calibration_rows(pipe, model_dir, calib_dir, seed=config.seed, samples=samples,
                            max_rows=_max_rows(samples)) if config.needs_rows else None
    pipe = None  # the text encoder and VAE are not needed past here (0.8 GB at SD-1.5's size)
    started = time.perf_counter()
    if earlier is not None:
        ordered = earlier.unet
    else:
        ordered = order_by_importance(base, importance_scores(base, config.importance, rows, seed=config.seed))
    order_seconds = time.perf_counter() - started
    # ``ordered`` is a copy: the loaded UNet itself is the frozen teacher (no second copy of the weights)
    teacher = base
    if memory == "lean" and config.train_steps:  # its outputs for the rows training takes, then its weights go
        teacher = TeacherOutputs(base, rows, config.batch_size, config.train_steps, config.seed,
                                 config.guidance_weight)
    base = None  # the source UNet is not needed past training: its memory goes before the reload checks
    training = train_slimmable(ordered, teacher, rows, config.widths, config.train_steps, config.lr,
                               config.batch_size, config.seed, progress, config.full_weight, config.scope,
                               config.guidance_weight, memory) if config.train_steps else {}
    teacher = None
    ordered.eval().requires_grad_(False)
    provenance = {"command": "slim", "source": str(model_dir), **config.to_dict(),
                  "trained": training.get("kept") == "trained"
                  or (earlier is not None and earlier.edgekit_structure.trained)}
    if earlier is not None:
        provenance["continued_from"] = {"path": str(init_dir), **earlier.edgekit_structure.provenance}
    structure = record(ordered, widths=config.widths, width_scope=config.scope, provenance=provenance)
    report = {"out": str(out), "config": config.to_dict(), "memory": memory, "order_seconds": round(order_seconds, 2),
              "training": training, "widths": width_table(ordered, config.widths, config.scope)}
    if checked and "memory_note" in checked:
        report["memory_note"] = checked["memory_note"]
    if not is_main_process():  # the other processes of a launch group trained the same weights
        return report
    with staged_dir(out) as staging, working("slim: write the model and reload every width"):
        write_structured_model(model_dir, staging, ordered, structure)
        report["reload_relative_error"] = check_widths_reload(staging, ordered, config.widths, config.scope)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _continued(init_dir: Path, base, config: SlimConfig):
    """The pipeline of an earlier slim output whose UNet has ``base``'s architecture, checked to match ``config``
    (its full-width UNet is where training continues)."""
    from edgekit.modeldir import ModelDir
    from edgekit.pipeline import load_pipeline

    init = ModelDir.of(init_dir, "init_dir")
    init_dir = init.path
    pipe = load_pipeline(init, "init_dir")
    structure = pipe.edgekit_structure
    if structure is None or not structure.slimmable:
        raise InputError("is not an edgekit slim output (no slimmable structure.json)", param="init_dir",
                         value=init_dir)
    if set(structure.offered) != set(widths_param(config.widths)) or structure.width_scope != config.scope:
        raise InputError(f"slimmable at {list(structure.widths)} ({structure.width_scope}), not "
                         f"{list(config.widths)} ({config.scope})", param="init_dir", value=init_dir)
    shapes = {name: tuple(t.shape) for name, t in base.state_dict().items()}
    if shapes != {name: tuple(t.shape) for name, t in pipe.unet.state_dict().items()}:
        raise InputError("its UNet does not have the architecture of the model being slimmed", param="init_dir",
                         value=init_dir)
    return pipe
