"""What a package run will do, settled before any work so that bad input fails first: the model, --out,
the widths (and whether the model must be slimmed first), each target's profile at its package precision."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import InputError
from edgekit.package.config import PackageConfig
from edgekit.package.outdir import OutDir, check_out
from edgekit.width import FULL, Width

if TYPE_CHECKING:
    from edgekit.modeldir import ModelDir


@dataclass
class Plan:
    """What the run will do, settled before any work so that bad input fails first."""

    model: "ModelDir"  # the source model, opened once: every stage reads it (or the prune / slim stage's output)
    out: Path
    widths: tuple[Width, ...]  # widest first
    slim: bool
    profiles: dict = field(default_factory=dict)  # target -> TargetProfile at its package precision
    out_dir: OutDir | None = None  # how --out is taken (resumed, restarted, new)

    @property
    def source(self) -> Path:
        return self.model.path


def reads_calibration(target: str, profile) -> bool:
    """The target's converter calibrates its own INT8 graphs (LiteRT's full-integer recipe) from the run's
    calibration."""
    from edgekit.targets import get_target

    return profile.precision in get_target(target).needs_calibration


def reads_quantized_onnx(target: str, profile) -> bool:
    """The target ships the quantize stage's QDQ graphs (ort-web and onnx at int8 with full attention; with
    pooled keys and values ort-web quantizes inside its export, from the same calibration)."""
    from edgekit.targets import get_target

    return (get_target(target).takes_quantized_onnx and profile.precision == "int8"
            and profile.attention_downsample == 1)


def plan(model_dir: Path, config: PackageConfig, out: Path, force: bool = False) -> Plan:
    from edgekit.modeldir import ModelDir
    from edgekit.profiles import TargetProfile, profiles_dir
    from edgekit.quantize import get_quantizer
    from edgekit.targets import DEFAULT_PROFILES, get_target

    model = ModelDir.of(model_dir)
    source = model.path
    out_dir = check_out(out, source, force, config.targets)  # before any work: a bad --out costs nothing
    structure = model.structure
    slimmable = structure is not None and structure.slimmable
    if slimmable:
        widths = config.widths or structure.offered
        if any(w not in structure.offered for w in widths):
            raise InputError(f"{source} is slimmable at {','.join(str(w) for w in structure.offered)} only",
                             param="widths", value=",".join(str(w) for w in widths))
        if config.prune is not None:
            raise InputError(f"{source} is already slimmable; prune its source model instead", param="prune",
                             value=f"{config.prune.ratio:g}")
    else:
        widths = config.widths or (FULL,)
    widths = tuple(sorted(set(widths), reverse=True))
    slim = not slimmable and any(not w.is_full for w in widths)
    if slim:
        from edgekit.pipeline import load_pipeline
        from edgekit.structure import check_widths

        slim_config = config.slim_config(widths)  # the slim stage's checks, before any work
        if structure is None:  # the layout only, built from the config without weights (0.2 s, not 8 s at 860M)
            from accelerate import init_empty_weights
            from diffusers import UNet2DConditionModel

            with init_empty_weights():
                unet = UNet2DConditionModel.from_config(model.unet_config)
        else:  # a pruned model: its recorded structure replayed on the weights
            unet = load_pipeline(source).unet
        check_widths(unet, slim_config.widths, slim_config.scope)
        from edgekit.compress.slim import check_memory as check_slim_memory

        # its measured memory line, before any work; errors name the fields as this config's slim section
        check_slim_memory(source, slim_config, section="slim")  # (--slim-steps for slim.train_steps)
    profiles = {}
    for name in config.targets:
        target = get_target(name)
        profile = TargetProfile.from_yaml(profiles_dir() / f"{DEFAULT_PROFILES[name]}.yaml")
        profile = profile.with_precision(config.precision(name))
        if config.attention_downsample != 1:
            profile = profile.with_attention_downsample(config.attention_downsample)
        if config.browser_check and target.browser_check:
            profile = replace(profile, verify_in_browser=True)
        if tuple(config.cache) != (1,):
            from edgekit.profiles import with_cache

            profile = with_cache(profile, list(config.cache))
        target.check_profile(profile)
        profiles[name] = profile
    if any(reads_quantized_onnx(name, profile) for name, profile in profiles.items()):  # the quantize stage runs
        quantizer = get_quantizer(config.quant)
        quantizer.check_backend()
        from edgekit.quantize import DEFAULT_COMPONENTS
        from edgekit.quantize.memory import check_memory

        check_memory(quantizer, source, DEFAULT_COMPONENTS, param="quant")  # before any work
    from edgekit.targets.base import sampling_plan

    for profile in profiles.values():  # the scheduler, step counts and guidance every export will take
        sampling_plan(model, profile, config.steps, config.guidance)
    return Plan(model=model, out=out_dir.path, widths=widths, slim=slim, profiles=profiles, out_dir=out_dir)
