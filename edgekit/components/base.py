"""What an exportable component is: the ``Component`` class every component module subclasses, and the data it
hands to every exporter and quantizer (``TensorSpec``, ``ComponentSpec``).

One class per component (in the spirit of optimum's one ``OnnxConfig`` per model part) owns every fact the
stages need about it: the pipeline attribute holding its module, its spec (input/output names, dtypes, shapes,
read from the pipeline's configs, never edited), plausible example inputs, the export wrapper (a module taking
the spec's inputs positionally and returning one tensor), the calibration hook that records what the pipeline
feeds it, the stand-in that runs it as a graph inside a diffusers pipeline, and its manifest key and folder.
Shapes use "batch" for the one axis that may vary.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from edgekit.errors import CalibrationError
from edgekit.width import Width


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints, with "batch" for the free leading axis

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "batch" else int(d) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@contextmanager
def forward_pre_hook(module: nn.Module, hook: Callable):
    """``hook(module, args, kwargs)`` sees every call of ``module`` while the block runs; removed after it."""
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Relative error (||a-b|| / ||b||) an fp32 export must stay under against torch.
    fp32_tolerance: float = 1e-4

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


class Component:
    """One exportable part of a diffusers pipeline. Subclasses set the class attributes and implement ``spec``
    and ``export_module``; the rest has defaults that fit most parts."""

    name: ClassVar[str] = ""  # manifest key, calibration and quantized folder name
    pipeline_attr: ClassVar[str] = ""  # the diffusers pipeline attribute holding the torch module
    per_width: ClassVar[bool] = False  # exported once per UNet width (manifest: {"widths": {Width.key: entry}})
    in_every_bundle: ClassVar[bool] = True  # the bundle sampler runs it; False: only where a target asks for it
    calibrated: ClassVar[bool] = True  # calibration captures its inputs, so the quantizers can take it
    # Another component whose captured rows are this one's inputs too (INT8 quantizes it from those rows)
    calibration_from: ClassVar[str | None] = None
    # INT8 calibrates it on rows it captures itself at export (``own_rows``), not on a calibration directory's
    captures_own_rows: ClassVar[bool] = False
    max_calib_rows: ClassVar[int] = 256  # default reservoir size of its calibration rows
    counts_params: ClassVar[bool] = False  # its manifest entry carries "params" (what widths change)
    # Its export module holds the UNet's named units (edgekit.quantize.sensitivity.units), which a LiteRT INT8 recipe
    # ranks and keeps float or int16 by name (edgekit.targets.tflite.plan_int8_recipe)
    int8_units: ClassVar[bool] = False
    # The part it plays in generation, by which the bundle sampler and the stages look it up (components.by_role):
    # "prompt" (text -> hidden states), "denoise" (the UNet), "decode" (latents -> image), "encode" (image ->
    # latents), "denoise_full" / "denoise_shallow" (the step-cache graphs)
    role: ClassVar[str] = ""
    # Which side of the graph carries VAE latents ("input" / "output"), for loaders that assume their own scale.
    latent_side: ClassVar[str | None] = None
    fp32_tolerance: ClassVar[float] = 1e-4

    # ------------------------------------------------------------------ facts
    def spec(self, pipe) -> ComponentSpec:
        raise NotImplementedError

    def export_module(self, pipe) -> nn.Module:
        """A module whose forward takes the spec's inputs positionally and returns one tensor."""
        raise NotImplementedError

    def torch_module(self, pipe) -> nn.Module:
        return getattr(pipe, self.pipeline_attr)

    def config(self, pipe):
        """The config of the pipeline module (what a diffusers/optimum loader reads beside the graph)."""
        return self.torch_module(pipe).config

    def folder(self, width: Width | None = None) -> str:
        """The component's folder in a bundle: ``unet/w0.50`` for a per-width one, else its name."""
        return f"{self.name}/{Width.parse(width).tag}" if self.per_width else self.name

    def label(self, width: Width | None = None) -> str:
        """How messages and verification results name it: ``unet@0.50`` or ``text_encoder``."""
        return f"{self.name}@{Width.parse(width).key}" if self.per_width else self.name

    def example_inputs(self, pipe, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Plausible random inputs of the spec's shapes (drawn in spec order from one seeded generator)."""
        rng = np.random.default_rng(seed)
        return {t.name: self.example_input(pipe, t, t.concrete(batch), rng) for t in self.spec(pipe).inputs}

    def example_input(self, pipe, tensor: TensorSpec, shape: tuple, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    # ------------------------------------------------------------------ manifest
    def check_entry(self, pipe, entry: dict, label: str) -> None:
        """Refuse an exported entry that cannot serve this pipeline (VerificationError); nothing by default."""

    def geometry_problem(self, entry: dict, geometry: dict) -> str | None:
        """What in a bundle's ``geometry`` disagrees with this entry's shapes, or None."""
        return None

    # ------------------------------------------------------------------ calibration
    @contextmanager
    def recording(self, pipe, offer: Callable[[dict], None], state: dict):
        """While active, ``offer`` receives one row (input name -> array, plus "order") per sample the pipeline
        feeds this component. ``state`` is shared by every component's hook (a running "order" counter, the
        current "step" and "prompt_batch", whether the UNet batch is a classifier-free-guidance pair)."""
        raise NotImplementedError(f"{self.name}: calibration does not capture this component")
        yield  # pragma: no cover

    # ------------------------------------------------------------------ running as a graph
    def standin(self, pipe, run: Callable[[dict], np.ndarray], input_names: list[str], where: str) -> nn.Module:
        """A module that takes the pipeline module's place and runs ``run`` (feeds by input name -> array)."""
        raise NotImplementedError(f"{self.name}: no stand-in to run it as a graph inside a pipeline")

    def install(self, pipe, module: nn.Module) -> None:
        # Set past DiffusionPipeline.__setattr__, which would rewrite the pipeline config with this class.
        pipe.__dict__[self.pipeline_attr] = module


class StandIn(nn.Module):
    """A torch-facing stand-in for a pipeline module whose work ``run`` does elsewhere (onnxruntime)."""

    def __init__(self, run: Callable[[dict], np.ndarray], input_names: list[str], config, where: str) -> None:
        super().__init__()
        self.runner = run
        self.input_names = list(input_names)
        self.config = config
        self.where = where
        # Keeps the pipeline's device/dtype queries answering "cpu, float32".
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _run(self, feeds: dict[str, np.ndarray]) -> torch.Tensor:
        out = self.runner({k: v for k, v in feeds.items() if k in self.input_names})
        return torch.from_numpy(np.asarray(out))


def numpy_rows(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def inputs_from_calibration(spec: ComponentSpec, rows: dict[str, np.ndarray], index=slice(None)) -> dict[str, np.ndarray]:
    """Select the spec's inputs from calibration rows, cast to the spec's dtypes."""
    missing = [t.name for t in spec.inputs if t.name not in rows]
    if missing:
        raise CalibrationError(f"{spec.name}: calibration rows carry no {', '.join(missing)} (they hold "
                               f"{', '.join(sorted(rows))}); re-run edgekit calibrate on this model")
    return {t.name: np.asarray(rows[t.name][index]).astype(t.dtype) for t in spec.inputs}


@torch.no_grad()
def run_torch(module: nn.Module, spec: ComponentSpec, inputs: dict[str, np.ndarray]) -> np.ndarray:
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.input_names()]
    return module(*args).detach().cpu().numpy()


def run_in_chunks(run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray],
                  rows_per_call: int | None) -> np.ndarray:
    """``run`` over ``inputs`` ``rows_per_call`` rows at a time (None: all in one call), outputs joined on
    the row axis. A real-size UNet's attention at 64x64 latents holds ~0.5 GB per row: 51 held-out rows in
    one ONNX Runtime call asked for a 27 GB buffer."""
    n = len(next(iter(inputs.values())))
    if rows_per_call is None or rows_per_call >= n:
        return run(inputs)
    return np.concatenate([run({k: v[i:i + rows_per_call] for k, v in inputs.items()})
                           for i in range(0, n, rows_per_call)])
