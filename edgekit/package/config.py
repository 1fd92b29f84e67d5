"""The package recipe: what `edgekit package` does, as a frozen, validated config (``PackageConfig``), and the
defaults a package run takes (targets, precisions, the prune and slim recipes)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgekit.errors import EdgekitError, InputError
from edgekit.width import Width

DEFAULT_TARGETS = ("ort-web", "tflite", "coreml")
# What each target ships by default: the smallest precision that keeps prompt accuracy. LiteRT ships its INT8 recipe
# (0.54x fp16's bytes): paired with fp16 on 1000 images per (width, steps) row, every row's 95% interval lies above
# -3 points (worst lower end -2.8; width 0.5, with dynamic-range activations, -0.7): see
# benchmarks/results/int8_recipes.md.
# onnx: the ort-web graphs plus the diffusers view, so the same precision.
DEFAULT_PRECISIONS = {"ort-web": "int8", "tflite": "int8", "coreml": "w8", "onnx": "int8"}


class PackageError(EdgekitError):
    """Some targets failed; the others were written and the report lists what failed and why."""

    exit_code = 1


# The package recipe: how `edgekit package` prunes and slims unless a --config file says otherwise. The config
# classes (PruneConfig, SlimConfig, QuantizeOptions) hold the defaults that `edgekit prune`, `slim` and
# `quantize` share; a package ships a model, so it asks for more than those quick defaults: Taylor importance
# and distillation steps (recovery after pruning; sandwich-rule training, with the full width weighted twice so
# it stays the source model's). Written into report.json with everything else, so a run can be repeated.
PRUNE_RECIPE = {"importance": "taylor", "recover_steps": 200, "recover_lr": 3e-4}
SLIM_RECIPE = {"train_steps": 3000, "importance": "taylor", "lr": 5e-4, "full_weight": 2.0}
RUN_WIDE = ("seed", "widths")  # set once for the whole run, never inside a prune/slim/quantize section


def _section(cls, value, recipe: dict, name: str, required=()):
    """``value`` (None, an instance of ``cls`` or a mapping of its fields over ``recipe``) as an instance of
    ``cls``; an error names the field as ``name.field``."""
    from edgekit.config import check_keys

    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise InputError(f"expected a mapping of {cls.__name__} fields", param=name, value=value)
    check_keys(value, cls, name)
    inside = [k for k in RUN_WIDE if k in value]
    if inside:
        raise InputError(f"'{inside[0]}' is set for the whole run (top level), not per section", param=name)
    missing = [k for k in required if k not in value]
    if missing:
        raise InputError(f"'{missing[0]}' is required", param=name)
    try:
        return cls.from_dict({**recipe, **value})
    except InputError as exc:
        if exc.param is None:
            raise
        raise InputError(exc.detail, param=f"{name}.{exc.param}", value=exc.value) from None


def _section_dict(obj) -> dict:
    return {k: v for k, v in obj.to_dict().items() if k not in RUN_WIDE}


@dataclass(frozen=True)
class PackageConfig:
    """What `edgekit package` does, as data: ``from_dict`` / ``from_yaml`` / ``to_dict`` round-trip, and the
    dict is what report.json records. Fields accept their plain forms (a width as a number, ``prune`` as a ratio
    or a mapping of PruneConfig fields over PRUNE_RECIPE, ``slim`` and ``quantize`` as mappings) and hold typed
    values after construction."""

    targets: tuple[str, ...] = DEFAULT_TARGETS
    widths: tuple[Width, ...] | None = None  # None: the model's widths when slimmable, else full width only
    prune: "PruneConfig | None" = None  # None: no pruning
    slim: "SlimConfig | dict" = field(default_factory=dict)  # a model that is not slimmable is slimmed with this
    quant: str = "ort-static"
    quantize: "QuantizeOptions | dict" = field(default_factory=dict)  # the quantize stage's options
    precisions: tuple[tuple[str, str], ...] = ()  # (target, precision) overrides of DEFAULT_PRECISIONS
    steps: tuple[int, ...] | None = None  # the bundles' (and bench's) step counts; None: the model's, else each profile's
    guidance: float | None = None  # the bundles' guidance scale; None: the model's edgekit_defaults.json
    calib_samples: int = 44
    # sampling steps per calibration image (None: the model's default, e.g. 50 for SD-1.5): rows come from the
    # steps the bundles run, and at real size the capture is the longest stage at the model's full schedule
    calib_steps: int | None = None
    samples: int = 20  # images per quality number (float quality per width, every table row)
    clip: str | None = None  # a local CLIP model directory: adds CLIP score to every quality number
    prompts: str | None = None  # calibration prompts file (None: the model's declared prompts, else the general set)
    repeats: int = 7  # timed images per table row (median): 3 left the policy choosing on noise
    seed: int = 0
    policy: dict | None = None  # policy parameters for every bundle (default: edgekit's)
    # every bundle's UNet attends to keys and values pooled by this factor at its highest resolution (1 = off;
    # edgekit.targets.attention_downsample); ort-web then quantizes inside its export, from the same calibration
    attention_downsample: int = 1
    # the bundles a browser runs (ort-web) are checked in headless Chromium on wasm and WebGPU at export, so the
    # page may use WebGPU where it was verified (skipped, and said, where this host has no Chromium)
    browser_check: bool = True
    # step-cache intervals every bundle offers (edgekit.step_cache; 1 = the plain loop, always offered)
    cache: tuple[int, ...] = (1,)

    def __post_init__(self):
        from edgekit.compress.prune import PruneConfig
        from edgekit.compress.slim import SlimConfig
        from edgekit.config import widths_param
        from edgekit.quantize import QuantizeOptions
        from edgekit.targets import get_target

        if isinstance(self.targets, str) or not all(isinstance(t, str) for t in self.targets):
            raise InputError("expected a list of target names", param="targets", value=self.targets)
        targets = tuple(self.targets)
        if not targets:
            raise InputError("expected at least one of " + ", ".join(DEFAULT_TARGETS), param="targets")
        for name in targets:
            try:
                get_target(name)  # one clear error for an unknown target
            except InputError as exc:
                raise InputError(exc.detail, param="targets", value=name) from None
        from edgekit.quantize import get_quantizer

        try:
            get_quantizer(self.quant)
        except InputError as exc:
            raise InputError(exc.detail, param="quant", value=self.quant) from None
        if len(set(targets)) != len(targets):
            raise InputError("a target is listed twice", param="targets", value=",".join(targets))
        precisions = tuple((str(t), str(p)) for t, p in
                           (self.precisions.items() if isinstance(self.precisions, dict) else self.precisions))
        for target, _ in precisions:
            if target not in targets:
                raise InputError(f"{target} is not among the targets {','.join(targets)}", param="precisions",
                                 value=f"{target}=...")
        for name in ("widths", "steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__")):
                raise InputError("expected a list", param=name, value=value)
        widths = self.widths
        if widths is not None:
            if not widths:
                raise InputError("expected at least one width", param="widths")
            widths = widths_param(widths)
        prune = self.prune
        if prune is not None:
            if isinstance(prune, (int, float)) and not isinstance(prune, bool):
                if not 0.0 < prune < 1.0:
                    raise InputError("expected a fraction of channels to remove in (0, 1)", param="prune",
                                     value=f"{prune:g}")
                prune = {"ratio": float(prune)}
            prune = _section(PruneConfig, prune, {**PRUNE_RECIPE, "seed": self.seed}, "prune", required=("ratio",))
            prune = replace(prune, seed=self.seed)
        slim = _section(SlimConfig, self.slim, {**SLIM_RECIPE, "seed": self.seed}, "slim")
        slim = replace(slim, seed=self.seed)
        quantize = _section(QuantizeOptions, self.quantize, {"seed": self.seed}, "quantize")
        quantize = replace(quantize, seed=self.seed)
        for name, value in (("calib_samples", self.calib_samples), ("repeats", self.repeats),
                            ("calib_steps", 1 if self.calib_steps is None else self.calib_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError("expected a positive whole number", param=name, value=value)
        from edgekit.quality.evaluator import MIN_SAMPLES

        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < MIN_SAMPLES:
            raise InputError(f"quality intervals need at least {MIN_SAMPLES} images", param="samples",
                             value=self.samples)
        if self.steps is not None and (not self.steps or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0
                                                             for s in self.steps)):
            raise InputError("expected positive whole numbers of sampling steps", param="steps",
                             value=",".join(str(s) for s in self.steps))
        from edgekit.limits import MAX_STEPS, check_at_most, check_repeats, check_samples, check_step_counts

        check_samples(self.samples)  # every limit named before the first stage runs (edgekit.limits)
        check_samples(self.calib_samples, "calib_samples")
        check_repeats(self.repeats)
        check_at_most(1 if self.calib_steps is None else self.calib_steps, MAX_STEPS, "calib_steps", "sampling steps")
        if self.steps is not None:
            check_step_counts(self.steps)
        if not isinstance(self.browser_check, bool):
            raise InputError("expected true or false", param="browser_check", value=self.browser_check)
        from edgekit.profiles import check_downsample_factor

        check_downsample_factor(self.attention_downsample)
        from edgekit.step_cache import parse_intervals

        parse_intervals(list(self.cache) if isinstance(self.cache, (list, tuple)) else self.cache, "cache")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))
                                          or not math.isfinite(self.guidance)):
            raise InputError("expected a finite number", param="guidance", value=self.guidance)
        if self.clip is not None:
            from edgekit.quality.clip import check_clip_dir

            check_clip_dir(self.clip)
        if self.prompts is not None:
            from edgekit.calibration import read_prompts

            read_prompts(Path(self.prompts))
        if self.policy is not None:
            from edgekit.policy import PolicyConfig

            PolicyConfig.from_dict(self.policy, "policy")
        for name, value in (("targets", targets), ("precisions", precisions), ("widths", widths), ("prune", prune),
                            ("slim", slim), ("quantize", quantize),
                            ("steps", None if self.steps is None else tuple(self.steps))):
            object.__setattr__(self, name, value)

    def precision(self, target: str) -> str:
        return dict(self.precisions).get(target, DEFAULT_PRECISIONS[target])

    def slim_config(self, widths) -> "SlimConfig":
        """The slim stage's config for the run's ``widths`` (full width added: the others distil from it)."""
        return replace(self.slim, widths=tuple(sorted({float(w) for w in widths} | {1.0})))

    @classmethod
    def from_dict(cls, data: dict, base: "PackageConfig | None" = None) -> "PackageConfig":
        """Strict: an unknown key is an error (with a "did you mean"). ``base``: the config ``data`` overrides
        (its sections and precisions are merged with ``data``'s, key by key)."""
        from edgekit.config import check_keys

        check_keys(data, cls, "package config")
        values = base.to_dict() if base is not None else {}
        for key, value in data.items():
            if key in ("slim", "quantize", "precisions") and isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            elif key == "prune" and isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            elif key == "prune" and isinstance(value, (int, float)) and isinstance(values.get(key), dict):
                value = {**values[key], "ratio": value}  # a ratio over the base's pruning settings
            values[key] = value
        for key in ("targets", "widths", "steps", "cache"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path | str, base: "PackageConfig | None" = None) -> "PackageConfig":
        """A YAML (or JSON) file of ``to_dict``'s fields, any subset; an error names the file and the field."""
        from edgekit.safe_read import read_yaml

        path = Path(path)
        # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
        data = read_yaml(path, "package config YAML", param="config_file", invalid="not a readable YAML file")
        try:
            return cls.from_dict({} if data is None else data, base)
        except InputError as exc:
            raise InputError(str(exc), param="config_file", value=path) from None
        except TypeError as exc:  # a value of the wrong kind (a list where a number belongs)
            raise InputError(f"a field has a value of the wrong kind ({exc})", param="config_file", value=path) from None

    def to_dict(self) -> dict:
        """Plain data (JSON and YAML): what report.json records and ``from_dict`` reads back."""
        return {"targets": list(self.targets),
                "widths": None if self.widths is None else [w.value for w in self.widths],
                "prune": None if self.prune is None else _section_dict(self.prune),
                "slim": _section_dict(self.slim),
                "quant": self.quant,
                "quantize": _section_dict(self.quantize),
                "precisions": dict(self.precisions),
                "steps": None if self.steps is None else list(self.steps),
                "guidance": self.guidance, "calib_samples": self.calib_samples, "calib_steps": self.calib_steps,
                "samples": self.samples,
                "clip": self.clip, "prompts": self.prompts, "repeats": self.repeats, "seed": self.seed,
                "policy": self.policy, "attention_downsample": self.attention_downsample,
                "browser_check": self.browser_check, "cache": list(self.cache)}
