"""Target profiles: the per-device facts an export follows (precision, opset, fixed shapes, guidance
batching, size caps, op rules), read from the YAML files in the top-level ``targets/`` folder.

A user changes a profile by editing YAML, never code. Loading is strict: an unknown key is an error
with a "did you mean", a value of the wrong type is an error naming the key and the expected type.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import InputError

PRECISIONS = ("fp32", "fp16", "int8", "w8", "palettize6", "w8a8", "mixed")
# Core ML palettization bit widths coremltools.optimize supports (OpPalettizerConfig nbits).
COREML_PALETTE_BITS = (1, 2, 3, 4, 6, 8)
# LiteRT op types a full-integer recipe may name (ai-edge-quantizer TFLOperationName values); "*" is every one.
LITERT_INT8_OPS = ("*", "CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE")
# How a width's int8 ops get their activations: int8 ranges calibrated ahead (static), int16 ranges calibrated
# ahead (LiteRT int16x8), or int8 ranges taken from each call's own values at run time (dynamic range).
LITERT_ACTIVATIONS = ("int8", "int16", "dynamic")
BATCHING = ("batch2", "two-calls")
# The ONNX opsets edgekit's exporter (torch.onnx's TorchScript exporter, edgekit.onnx_export) writes these
# models in: scaled-dot-product attention needs opset 14, and that exporter stops at 20.
EXPORT_OPSETS = (14, 20)
# A file cap below 1 MiB cannot be honoured: one weight tensor of the smallest model is larger, and a tensor is
# never split across chunks.
MIN_FILE_MB = 1.0
LAYOUTS = ("NCHW", "NHWC")


def profiles_dir() -> Path:
    """The shipped profiles: ``targets/`` of the source checkout (the copies a user edits) when edgekit runs
    from one, else the installed wheel's own copies (edgekit.resources)."""
    from edgekit.resources import shipped_path

    return shipped_path("targets")


class _Strict:
    """from_dict/to_dict for frozen dataclasses whose fields are str, int, float, bool, tuples of
    those, or nested _Strict dataclasses. ``where`` prefixes every error (file and key path)."""

    @classmethod
    def from_dict(cls, data, where: str = "profile"):
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for key, value in data.items():
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
                raise InputError(f"{where}: unknown key '{key}'{hint}")
            values[key] = _coerce(value, hints[key], f"{where}.{key}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise InputError(f"{where}: missing key(s) {', '.join(missing)}")
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Strict):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, _Strict) else v for v in value]
            out[f.name] = value
        return out


def _type_name(tp) -> str:
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and issubclass(tp, _Strict):
        return tp.from_dict(value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected {_type_name(bool)}, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected {_type_name(int)}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected {_type_name(float)}, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected {_type_name(str)}, got {value!r}")
        return value
    raise TypeError(f"unsupported profile field type {tp}")  # a programming error, not user input


def _choice(value: str, allowed: tuple, what: str) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"{what} '{value}' is not one of {', '.join(allowed)}{hint}")


@dataclass(frozen=True)
class Tolerances(_Strict):
    """Largest relative error (||a-b|| / ||b||) against torch that a component may show, per precision."""

    fp32: float = 1e-4
    fp16: float = 2e-2
    int8: float = 0.5
    w8: float = 5e-2
    palettize6: float = 0.2
    w8a8: float = 0.2
    mixed: float = 0.3

    def __post_init__(self):
        import math

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"tolerance.{f.name} {value}: expected a finite relative error > 0")

    def for_precision(self, precision: str) -> float:
        return float(getattr(self, precision.partition(":")[0]))


@dataclass(frozen=True)
class OpRules(_Strict):
    """Operators a bundle must not contain (exact names or prefixes ending in '*')."""

    forbidden: tuple[str, ...] = ()

    def violations(self, ops) -> list[str]:
        bad = []
        for op in sorted(set(ops)):
            for rule in self.forbidden:
                if (rule.endswith("*") and op.startswith(rule[:-1])) or op == rule:
                    bad.append(op)
                    break
        return bad


@dataclass(frozen=True)
class LiteRTWidthRecipe(_Strict):
    """What one UNet width adds to the recipe: its own sensitivity budget (replacing the recipe's) and units."""

    width: float
    sensitive_budget: float = 0.0
    float_units: tuple[str, ...] = ()
    int16_units: tuple[str, ...] = ()
    # the int8 ops' activations at this width: int8, int16 or dynamic (LITERT_ACTIVATIONS); at a dynamic width the
    # int16 units (named, or ranked with sensitive_as: int16) still get calibrated int16 activations
    activations: str = "int8"

    def __post_init__(self):
        _choice(self.activations, LITERT_ACTIVATIONS, f"int8_recipe.widths entry {self.width:g}: activations")
        if not 0.0 < self.width <= 1.0:
            raise InputError(f"int8_recipe.widths entry width {self.width}: expected a width in (0, 1]")
        if not 0.0 <= self.sensitive_budget < 1.0:
            raise InputError(f"int8_recipe.widths entry {self.width:g}: sensitive_budget {self.sensitive_budget}: "
                             "expected a fraction in [0, 1)")


@dataclass(frozen=True)
class LiteRTInt8Recipe(_Strict):
    """How the tflite target quantizes a UNet to full-integer INT8 (ai-edge-quantizer, static ranges from the
    calibration rows). Units are module paths of the UNet (edgekit.quantize.sensitivity: ``down_blocks.0.resnets.1``,
    ``conv_in``); they are checked against each width's UNet before anything is written."""

    # op types that get int8 weights and int8 activations; every other op stays float ("*": all of them)
    int8_ops: tuple[str, ...] = ("*",)
    float_units: tuple[str, ...] = ()  # units left float at every width
    int16_units: tuple[str, ...] = ()  # units with int16 activations (int8 weights; LiteRT's int16x8 kernels)
    # plus, per width, the units the sensitivity ranking (one unit INT8 at a time, output rel-err on the
    # calibration rows) puts first, while their weights fit this fraction of the UNet's conv/linear weights
    sensitive_budget: float = 0.0
    sensitive_as: str = "float"  # how those ranked units are kept: float or int16
    # tensor names in the flatbuffer shortened to ids (signature names kept): ~0.6 MB of scope names per UNet
    compact_names: bool = False
    widths: tuple[LiteRTWidthRecipe, ...] = ()  # per-width budget and units (a width that loses more accuracy)

    def __post_init__(self):
        for op in self.int8_ops:
            _choice(op, LITERT_INT8_OPS, "int8_recipe.int8_ops entry")
        if not self.int8_ops:
            raise InputError("int8_recipe.int8_ops: expected at least one op type (or '*')")
        if not 0.0 <= self.sensitive_budget < 1.0:
            raise InputError(f"int8_recipe.sensitive_budget {self.sensitive_budget}: expected a fraction in [0, 1)")
        _choice(self.sensitive_as, ("float", "int16"), "int8_recipe.sensitive_as")
        both = sorted(set(self.float_units) & set(self.int16_units))
        if both:
            raise InputError(f"int8_recipe: units {both} are listed both in float_units and int16_units")
        seen = [round(w.width, 6) for w in self.widths]
        if len(set(seen)) != len(seen):
            raise InputError(f"int8_recipe.widths: a width is listed twice ({', '.join(f'{w:g}' for w in seen)})")

    def for_width(self, width: float | None) -> tuple[float, tuple[str, ...], tuple[str, ...]]:
        """(sensitive budget, float units, int16 units) at ``width``: the width's entry, else the recipe's own."""
        entry = next((w for w in self.widths if width is not None and abs(w.width - float(width)) < 1e-6), None)
        if entry is None:
            return self.sensitive_budget, self.float_units, self.int16_units
        return (entry.sensitive_budget, tuple(dict.fromkeys(self.float_units + entry.float_units)),
                tuple(dict.fromkeys(self.int16_units + entry.int16_units)))

    def activations_for(self, width: float | None) -> str:
        """How the int8 ops' activations are quantized at ``width``: the width entry's ``activations``, else int8."""
        entry = next((w for w in self.widths if width is not None and abs(w.width - float(width)) < 1e-6), None)
        return entry.activations if entry is not None else "int8"


@dataclass(frozen=True)
class CoreMLRecipes(_Strict):
    """Core ML compression that uses the calibration rows: ``w8a8`` (int8 activations on conv/linear inputs,
    ranges from the rows, then int8 weights) and ``mixed`` (palettization with a bit width per layer, chosen by
    each layer's measured output PSNR against float, to reach an average bit width)."""

    # the devices whose Neural Engine computes int8 x int8 (elsewhere W8A8 runs, dequantized, at fp16 speed)
    w8a8_devices: str = "A17 Pro, M4 and later"
    w8a8_deployment_target: str = "iOS17"  # quantize/dequantize activations need the iOS17 opset
    palette_bits: tuple[int, ...] = (2, 4, 6, 8)  # bit widths a layer may get
    mixed_target_bits: float = 4.5  # average bits per palettized weight (--precision mixed:4.5 overrides)
    min_palettize_weights: int = 2048  # smaller weight tensors stay fp16 (coremltools' own threshold)
    palette_group_size: int = 0  # output channels per look-up table (0: one per weight; > 0 needs iOS18)

    def __post_init__(self):
        for bits in self.palette_bits:
            if bits not in COREML_PALETTE_BITS:
                raise InputError(f"coreml.palette_bits entry {bits}: coremltools palettizes to "
                                 f"{', '.join(map(str, COREML_PALETTE_BITS))} bits")
        if not self.palette_bits:
            raise InputError("coreml.palette_bits: expected at least one bit width")
        check_mixed_target(self.mixed_target_bits, self.palette_bits, "coreml.mixed_target_bits")
        if self.palette_group_size < 0:
            raise InputError(f"coreml.palette_group_size {self.palette_group_size}: expected 0 (one look-up table "
                             "per weight) or a positive number of output channels")


def check_mixed_target(bits: float, palette_bits, what: str) -> None:
    lo, hi = min(palette_bits), max(palette_bits)
    if not lo <= bits <= hi:
        raise InputError(f"{what} {bits:g}: expected an average between the smallest and largest palette bit "
                         f"width ({lo} and {hi})")


@dataclass(frozen=True)
class TargetProfile(_Strict):
    name: str
    target: str  # registry name of the exporter: ort-web, tflite, coreml
    description: str = ""
    precision: str = "fp32"  # default when --precision is not given
    precisions: tuple[str, ...] = ("fp32",)  # what this device accepts
    opset: int = 17  # ONNX opset of every ONNX graph the target starts from
    fixed_shapes: bool = False  # true: every input shape is concrete (no dynamic batch)
    guidance_batching: str = "batch2"  # batch2: one UNet call on [uncond, cond]; two-calls: batch 1 twice
    layout: str = "NCHW"  # tensor layout the device code must feed
    max_file_mb: float = 2047.0  # split or refuse any single file above this
    steps: tuple[int, ...] = (4, 8, 12, 20)  # step counts whose schedules the manifest carries
    converter: str = ""  # tflite only: litert-torch or onnx2tf
    minimum_deployment_target: str = ""  # coreml only: iOS16, iOS17, iOS18
    ops: OpRules = field(default_factory=OpRules)
    tolerance: Tolerances = field(default_factory=Tolerances)
    verify_in_node: bool = False  # ort-web: also run each graph in onnxruntime-web under Node
    # ort-web: also run each graph in headless Chromium on wasm and WebGPU and record per-EP results (the page
    # runs a graph on WebGPU only where that check passed)
    verify_in_browser: bool = False
    # ort-web / onnx: these components' attention blocks as one com.microsoft MultiHeadAttention node each (no
    # full score matrix; edgekit.targets.ort_attention)
    fused_attention: tuple[str, ...] = ()
    # the UNet's self-attention at its `attention_downsample_levels` highest-resolution levels attends to keys and
    # values average-pooled by this factor per side (1 = off; edgekit.targets.attention_downsample): an
    # approximation, measured by bench's reference fidelity
    attention_downsample: int = 1
    attention_downsample_levels: int = 1
    # step caching (edgekit.step_cache): the cache intervals the bundle offers (1 = the plain loop, always
    # offered); above 1 the export adds, per width, the full UNet graph that also outputs the cached feature and
    # the shallow graph, and the manifest a per-step plan for each interval and step count
    cache_intervals: tuple[int, ...] = (1,)
    # INT8 bundles: components that get int8 weights with float activations (dynamic range) instead of
    # full-integer, because their activations do not survive int8 (measured: the CLIP text encoder).
    int8_float_activations: tuple[str, ...] = ()
    # INT8 bundles: substrings of module paths whose ops stay float inside an otherwise full-integer graph
    # (measured: the UNet's sinusoidal timestep embedding; tflite only, matched on the op names).
    int8_float_scopes: tuple[str, ...] = ()
    int8_recipe: LiteRTInt8Recipe = field(default_factory=LiteRTInt8Recipe)  # tflite only
    coreml: CoreMLRecipes = field(default_factory=CoreMLRecipes)  # coreml only

    def __post_init__(self):
        _choice(self.precision, PRECISIONS, "precision")
        for p in self.precisions:
            _choice(p, PRECISIONS, "precisions entry")
        if self.precision not in self.precisions:
            raise InputError(f"precision '{self.precision}' is not among precisions {list(self.precisions)}")
        _choice(self.guidance_batching, BATCHING, "guidance_batching")
        _choice(self.layout, LAYOUTS, "layout")
        lo, hi = EXPORT_OPSETS
        if not lo <= self.opset <= hi:
            raise InputError(f"opset {self.opset}: expected {lo}..{hi} (the opsets edgekit's ONNX exporter writes)")
        import math

        if not math.isfinite(self.max_file_mb) or self.max_file_mb < MIN_FILE_MB:
            raise InputError(f"max_file_mb {self.max_file_mb}: expected a finite number of at least {MIN_FILE_MB:g} "
                             "(MiB; a weight tensor is never split across files)")
        from edgekit.components import CALIB_COMPONENTS  # what INT8 can quantize (calibration captures it)

        for name in self.int8_float_activations:
            _choice(name, CALIB_COMPONENTS, "int8_float_activations entry")
        from edgekit.components import COMPONENTS

        for name in self.fused_attention:
            _choice(name, tuple(COMPONENTS.names()), "fused_attention entry")
        for key in ("attention_downsample", "attention_downsample_levels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
                raise InputError(f"{key} {value!r}: expected a whole number in 1..8")
        from edgekit.step_cache import parse_intervals

        if tuple(self.cache_intervals) != parse_intervals(list(self.cache_intervals), "cache_intervals"):
            raise InputError(f"cache_intervals {list(self.cache_intervals)}: expected whole numbers >= 1 in "
                             "increasing order, starting with 1 (the plain loop)")
        if not self.steps or any(s <= 0 for s in self.steps):
            raise InputError(f"steps {list(self.steps)}: expected a non-empty list of positive whole numbers")
        from edgekit.limits import check_step_counts

        check_step_counts(self.steps)

    @property
    def unet_batch(self) -> int:
        return 2 if self.guidance_batching == "batch2" else 1

    @classmethod
    def from_yaml(cls, path: Path | str, param: str = "profile") -> "TargetProfile":
        from edgekit.safe_read import read_yaml

        path = Path(path)
        if not path.exists():
            raise InputError("no such file (expected a target profile YAML, see targets/)", param=param, value=path)
        # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
        data = read_yaml(path, "target profile YAML", param=param)
        return cls.from_dict(data, where=str(path))

    def with_precision(self, precision: str | None) -> "TargetProfile":
        if precision is None:
            return self
        name, sep, value = precision.partition(":")
        if name not in self.precisions:
            raise InputError(f"target profile '{self.name}' offers {', '.join(self.precisions)}", param="precision",
                             value=precision)
        if name != "mixed" and sep:
            raise InputError("only mixed takes a value (mixed:BITS, an average bit width)", param="precision",
                             value=precision)
        if name == "mixed" and sep:
            try:
                bits = float(value)
            except ValueError:
                raise InputError("expected mixed:BITS with BITS a number such as 4.5", param="precision",
                                 value=precision) from None
            check_mixed_target(bits, self.coreml.palette_bits, f"--precision {precision}: average bit width")
            return dataclasses.replace(self, precision=name,
                                       coreml=dataclasses.replace(self.coreml, mixed_target_bits=bits))
        return dataclasses.replace(self, precision=name)


    def with_attention_downsample(self, factor: int, param: str = "attention_downsample") -> "TargetProfile":
        check_downsample_factor(factor, param)
        return dataclasses.replace(self, attention_downsample=factor)


def check_downsample_factor(factor, param: str = "attention_downsample") -> None:
    """A key/value downsampling factor as a flag or recipe field gives it: a whole number in 1..8 (1 = off)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 8:
        raise InputError("expected a whole number in 1..8 (1 = off)", param=param, value=factor)


def with_cache(profile: TargetProfile, intervals, param: str = "cache") -> TargetProfile:
    """``profile`` offering the step-cache intervals ``intervals`` ("1,2,3" or a list; 1 is always offered)."""
    from edgekit.step_cache import parse_intervals

    return dataclasses.replace(profile, cache_intervals=parse_intervals(intervals, param))


def shipped_profile(name: str) -> TargetProfile:
    return TargetProfile.from_yaml(profiles_dir() / f"{name}.yaml")
