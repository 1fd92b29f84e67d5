"""Capture the real inputs of text_encoder, unet and vae_decoder by running the pipeline over prompts.

Hooks record exactly what the pipeline feeds each component: the token ids, every UNet call at every
timestep with the classifier-free-guidance batch as the pipeline builds it (and, for a UNet with
``time_cond_proj_dim``, the guidance embedding it gets as ``timestep_cond``), and the latents handed to
the VAE decoder. A seeded reservoir keeps at most ``max_rows`` rows per component, so memory and disk
stay bounded whatever the number of prompts and steps. This directory is the single calibration
source for every quantizer and target.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.components import CALIB_COMPONENTS, all_components
from edgekit.components.unet import guidance_dim as unet_guidance_dim
from edgekit.constants import CALIB_META
from edgekit.errors import CalibrationError, InputError, NumericError
from edgekit.fsutil import sha256_file
from edgekit.modeldir import UNET, VAE, ModelDir
from edgekit.resources import shipped_path

FORMAT_VERSION = 1
SHARD_ROWS = 256


@dataclass(frozen=True)
class CalibrationConfig:
    prompts: tuple[str, ...]
    steps: int = 20
    samples: int | None = None  # images to generate; prompts are cycled. None: one per prompt
    guidance_scale: float = 7.5
    seed: int = 0
    max_rows: dict = field(default_factory=lambda: {c.name: c.max_calib_rows for c in all_components() if c.calibrated})
    batch_size: int = 16

    def __post_init__(self):
        if not self.prompts:
            raise InputError("calibration needs at least one prompt")
        if self.steps <= 0:
            raise InputError("expected a positive whole number", param="steps", value=self.steps)
        if self.samples is not None and self.samples <= 0:
            raise InputError("expected a positive whole number", param="samples", value=self.samples)
        from edgekit.limits import MAX_SAMPLES, MAX_STEPS, check_at_most, check_samples

        if self.samples is not None:
            check_samples(self.samples)
        else:  # one image per prompt
            check_at_most(len(self.prompts), MAX_SAMPLES, "prompts", "prompts (one image each)")
        check_at_most(self.steps, MAX_STEPS, "steps", "sampling steps")
        unknown = set(self.max_rows) - set(CALIB_COMPONENTS)
        if unknown:
            raise InputError(f"unknown calibration component(s) {sorted(unknown)}; known: {list(CALIB_COMPONENTS)}")
        for name, rows in self.max_rows.items():
            if int(rows) <= 0:
                raise InputError(f"{name}: expected a positive whole number, got {rows}", param="max_rows")


GENERAL_PROMPTS_FILE = shipped_path("calibration_data", "general_prompts.txt")  # checkout copy, else the wheel's


def default_prompts_file(model_dir: Path | None = None) -> Path:
    """The prompts a model is calibrated with when the user names none: the file its directory declares
    (edgekit_defaults.json "calibration_prompts", relative to the directory; prune, slim and quantize
    outputs copy it), else the general set written for any model (calibration_data/general_prompts.txt).
    ``None`` is the embedded default model."""
    from edgekit.modeldir import ModelDir

    if model_dir is None:
        from edgekit.pipeline import default_model_dir

        model_dir = default_model_dir()
    model = model_dir if isinstance(model_dir, ModelDir) else ModelDir.unchecked(model_dir)
    return model.prompts_file or GENERAL_PROMPTS_FILE


def read_prompts(path: Path, param: str = "prompts") -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped. A line in double quotes is a
    JSON string: ``""`` is the empty prompt (the one guidance runs), ``"# not a comment"`` keeps its '#'."""
    import json

    from edgekit.safe_read import MAX_TEXT_BYTES, lone_surrogate, read_bytes

    path = Path(path)
    what = "text file, one prompt per line"
    # bounded: a regular file (a FIFO is refused by its type, never waited on) of at most MAX_TEXT_BYTES
    data = read_bytes(path, MAX_TEXT_BYTES, what, param=param)
    if b"\0" in data:
        raise InputError("a binary file (NUL bytes), expected UTF-8 text with one prompt per line",
                         param=param, value=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text (expected one prompt per line)", param=param, value=path) from None
    lines = text.removeprefix("\ufeff").splitlines()  # a byte-order mark is no part of the first line
    prompts, comments = [], 0
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            comments += 1
            continue
        if len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                text = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"line {number} is not a valid quoted prompt ({exc.msg})",
                                 param=param, value=path) from None
            if not isinstance(text, str) or lone_surrogate(text) is not None:
                raise InputError(f"line {number} is not a quoted prompt of valid Unicode text (a lone UTF-16 "
                                 "surrogate escape, or not a JSON string)", param=param, value=path)
        prompts.append(text)
    if not prompts:
        what = f"only comments ({comments} comment line{'s' if comments != 1 else ''})" if comments else "empty"
        raise InputError(f"no prompts, the file is {what} (expected one prompt per line)", param=param, value=path)
    return prompts


class Reservoir:
    """Seeded uniform sample of at most ``capacity`` rows from a stream (Algorithm R).

    With ``spill_dir`` every kept row lives in its own file there (a slot replaced by a later row is
    overwritten), and only each slot's "order" stays in memory: a real-size UNet row is ~0.3 MB, so 1024 kept
    rows would be ~300 MB held for the whole capture, and stacking them for the shards as much again.
    ``shards`` reads the rows back in stream order, one shard at a time."""

    def __init__(self, capacity: int, rng: np.random.Generator, spill_dir: Path | None = None) -> None:
        self.capacity = capacity
        self.rng = rng
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self.rows: list[dict[str, np.ndarray]] = []  # in memory (no spill_dir)
        self.orders: list[int] = []  # each slot's stream position
        self.seen = 0
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.orders)

    def _put(self, slot: int, row: dict[str, np.ndarray]) -> None:
        order = int(row["order"])
        if self.spill_dir is not None:
            with open(self.spill_dir / f"slot_{slot:06d}.npz", "wb") as fh:
                np.savez(fh, **row)
        elif slot == len(self.rows):
            self.rows.append(row)
        else:
            self.rows[slot] = row
        if slot == len(self.orders):
            self.orders.append(order)
        else:
            self.orders[slot] = order

    def _get(self, slot: int) -> dict[str, np.ndarray]:
        if self.spill_dir is None:
            return self.rows[slot]
        with np.load(self.spill_dir / f"slot_{slot:06d}.npz") as data:
            return {k: data[k] for k in data.files}

    def offer(self, row: dict[str, np.ndarray]) -> None:
        self.seen += 1
        if len(self.orders) < self.capacity:
            self._put(len(self.orders), row)
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.capacity:
            self._put(j, row)

    def shards(self, rows_per_shard: int):
        """The kept rows in stream order, stacked ``rows_per_shard`` at a time (the last shard may be shorter)."""
        order = sorted(range(len(self.orders)), key=lambda i: self.orders[i])
        for start in range(0, len(order), rows_per_shard):
            part = [self._get(i) for i in order[start:start + rows_per_shard]]
            yield {k: np.stack([row[k] for row in part]) for k in part[0]}

    def stacked(self) -> dict[str, np.ndarray]:
        return next(self.shards(max(len(self.orders), 1)))


@contextmanager
def _recording(pipe, reservoirs: dict[str, Reservoir], state: dict):
    """Each calibrated component's own hook (edgekit.components), active for this block only."""
    from contextlib import ExitStack

    from edgekit.components import get_component

    with ExitStack() as stack:
        for name, reservoir in reservoirs.items():
            stack.enter_context(get_component(name).recording(pipe, reservoir.offer, state))
        yield


def capture(pipe, config: CalibrationConfig, out_dir: Path, model_dir: Path, prompts_file: Path | None = None,
            progress=None) -> dict:
    """Run the pipeline, write shards and meta.json into ``out_dir`` (an empty staging directory)."""
    import torch

    from edgekit.pipeline import generate

    n = config.samples or len(config.prompts)  # at most MAX_SAMPLES (CalibrationConfig)
    rng = np.random.default_rng(config.seed)
    # kept rows wait on disk beside the shards (hidden folders, removed once the shards are written)
    reservoirs = {name: Reservoir(int(config.max_rows.get(name, 256)), rng, spill_dir=Path(out_dir) / f".rows-{name}")
                  for name in CALIB_COMPONENTS}
    guidance_dim = unet_guidance_dim(pipe.unet.config)
    # as diffusers decides: a UNet with a guidance embedding gets it as timestep_cond, never a CFG batch
    state = {"order": 0, "step": 0, "prompt_batch": 0, "cfg": config.guidance_scale > 1.0 and not guidance_dim,
             "guidance_dim": guidance_dim, "uncond_calls": 0}
    task = progress.add_task("calibrate", total=n) if progress else None
    with _recording(pipe, reservoirs, state):
        for start in range(0, n, config.batch_size):
            state["step"] = 0
            state["prompt_batch"] = start
            batch = range(start, min(start + config.batch_size, n))  # each batch's prompts and seeds built as it runs
            generate(pipe, [config.prompts[i % len(config.prompts)] for i in batch], [config.seed + i for i in batch],
                     config.steps, config.guidance_scale, batch_size=config.batch_size)
            if task is not None:
                progress.update(task, advance=min(config.batch_size, n - start))

    if state["uncond_calls"]:
        raise CalibrationError(f"the pipeline called the UNet {state['uncond_calls']} time(s) without timestep_cond, "
                               f"the guidance embedding its time_cond_proj_dim {guidance_dim} asks for; nothing "
                               "written (a diffusers StableDiffusionPipeline passes it)")
    import shutil

    components = {}
    for name, reservoir in reservoirs.items():
        if not len(reservoir):
            raise CalibrationError(f"the pipeline never called {name}; nothing to calibrate it with")
        comp_dir = out_dir / name
        comp_dir.mkdir(parents=True)
        shards, inputs, bad, rows = [], {}, {}, 0
        for s, arrays in enumerate(reservoir.shards(SHARD_ROWS)):  # one shard in memory at a time
            arrays.pop("order")
            for key, values in arrays.items():
                if np.issubdtype(values.dtype, np.floating):
                    bad[key] = bad.get(key, 0) + int((~np.isfinite(values.reshape(len(values), -1))).any(axis=1).sum())
            inputs = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in arrays.items()}
            shard_path = comp_dir / f"shard_{s:05d}.npz"
            np.savez(shard_path, **arrays)
            count = len(next(iter(arrays.values())))
            rows += count
            shards.append({"file": f"{name}/{shard_path.name}", "rows": count, "sha256": sha256_file(shard_path)})
        for key, count in bad.items():
            if count:
                raise NumericError(f"calibrate: {name} input '{key}' holds NaN/Inf in {count} of {rows} "
                                   "captured rows; nothing written")
        if reservoir.spill_dir is not None:
            shutil.rmtree(reservoir.spill_dir)
        components[name] = {
            "rows": rows,
            "rows_seen": reservoir.seen,
            "inputs": inputs,
            "shards": shards,
        }
    meta = {
        "format_version": FORMAT_VERSION,
        "width": float(getattr(pipe, "edgekit_width", 1.0) or 1.0),
        "edgekit_version": __version__,
        "model": {"path": str(model_dir), "sha256": ModelDir.unchecked(model_dir).sha256},
        "prompts": list(config.prompts),
        "prompts_file": ({"path": str(prompts_file), "sha256": sha256_file(prompts_file)} if prompts_file else None),
        "config": {k: v for k, v in asdict(config).items() if k != "prompts"},
        "images_generated": n,
        "torch_version": torch.__version__,
        "components": components,
    }
    (out_dir / CALIB_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _check_meta(meta, meta_path: Path) -> None:
    """The shape every reader of meta.json relies on, or one CalibrationError naming the field."""
    def fail(what: str):
        raise CalibrationError(f"{meta_path}: {what} (expected the {CALIB_META} edgekit calibrate writes)")

    if not isinstance(meta, dict):
        fail(f"a JSON {type(meta).__name__}, not an object")
    if not isinstance(meta.get("components"), dict):
        fail("'components' missing or not an object")
    for key in ("model", "config"):
        if not isinstance(meta.get(key, {}), dict):
            fail(f"'{key}' is not an object")
    width = meta.get("width", meta.get("config", {}).get("width", 1.0))
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1):
        fail(f"width {width!r} is not a width multiplier in (0, 1]")
    meta.setdefault("model", {})
    for name, info in meta["components"].items():
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list) or not all(
                isinstance(sh, dict) and isinstance(sh.get("file"), str) and isinstance(sh.get("sha256"), str)
                and not Path(sh["file"]).is_absolute() and ".." not in Path(sh["file"]).parts
                for sh in shards):
            fail(f"components.{name}.shards is not a list of {{file, sha256}} entries inside the directory")
        if not isinstance(info.get("inputs", {}), dict):
            fail(f"components.{name}.inputs is not an object")


def _check_guidance_rows(meta: dict, directory: Path, model: ModelDir, param: str) -> None:
    """UNet rows carry timestep_cond exactly when the model's UNet takes a guidance embedding, at its width
    (rows from an edgekit that did not capture it cannot calibrate or verify the exported graph)."""
    unet = meta["components"].get(UNET)
    config_path = model.config_path(UNET)
    if unet is None or _config(model, UNET) is None:
        return  # the model's own checks name a missing or unreadable config
    dim = model.guidance_dim
    captured = (unet.get("inputs") or {}).get("timestep_cond")
    shape = captured.get("shape") if isinstance(captured, dict) else captured
    if dim and shape != [dim]:
        what = "no timestep_cond" if captured is None else f"timestep_cond of shape {shape}"
        raise CalibrationError(f"unet rows carry {what}, but {config_path} has time_cond_proj_dim {dim} (a guidance "
                               f"embedding of shape [{dim}] per row); re-run edgekit calibrate on {model}",
                               param=param, value=directory)
    if not dim and captured is not None:
        raise CalibrationError(f"unet rows carry timestep_cond, but {config_path} has no time_cond_proj_dim (the "
                               f"UNet takes no guidance embedding); re-run edgekit calibrate on {model}",
                               param=param, value=directory)


def _config(model: ModelDir, component: str) -> dict | None:
    try:
        return model.config(component)
    except InputError:
        return None  # the model's own checks name a missing or unreadable config


def _check_rows_fit_configs(meta: dict, directory: Path, model: ModelDir, param: str) -> None:
    """The captured row shapes against what the model's configs say its components take (channels, latent
    size, text width), read from the JSON files alone: rows captured from another model of the same family
    (the reduced SD-1.5 given to the real-size one) fail here in milliseconds, before its weights are hashed
    or loaded."""
    unet = _config(model, UNET) or {}
    vae = _config(model, VAE) or {}
    size = unet.get("sample_size")
    size = size if isinstance(size, int) else None
    decoder = next(c.name for c in all_components() if c.calibrated and c.latent_side == "input")  # VAE decoder
    expected = {
        (UNET, "sample"): [unet.get("in_channels"), size, size],
        (UNET, "encoder_hidden_states"): [None, unet.get("cross_attention_dim")],
        (decoder, "latent_sample"): [vae.get("latent_channels"), size, size],
    }
    components = meta["components"]
    for (component, tensor), dims in expected.items():
        info = components.get(component)
        captured = ((info or {}).get("inputs") or {}).get(tensor) if isinstance(info, dict) else None
        shape = captured.get("shape") if isinstance(captured, dict) else None
        if not isinstance(shape, list) or len(shape) != len(dims):
            continue
        if any(isinstance(want, int) and not isinstance(want, bool) and got != want for got, want in zip(shape, dims)):
            wanted = "[" + ", ".join("*" if d is None else str(d) for d in dims) + "]"
            raise CalibrationError(f"{component} rows have {tensor} of shape {shape}, but {model} takes {wanted} "
                                   f"(captured from another model, {meta['model'].get('path')}); re-run edgekit "
                                   f"calibrate on {model}", param=param, value=directory)


@dataclass(frozen=True)
class CalibrationSet:
    """A read-only view of a calibration directory, checked against the model it is used with."""

    directory: Path
    meta: dict

    @classmethod
    def open(cls, directory: Path | str, model_dir: Path | None = None, param: str = "calib",
             check_hash: bool = True) -> "CalibrationSet":
        """Open a calibration directory; with ``model_dir``, check it was captured from that model: its row
        shapes against the model's configs first (cheap), then (``check_hash``) the model's files' digest,
        which reads every weight byte (seconds at 3.4 GB; ``check_model_digest`` runs it later)."""
        try:
            directory = Path(directory).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise CalibrationError(f"cannot be resolved ({exc})", param=param, value=directory) from None
        meta_path = directory / CALIB_META
        if not directory.is_dir():
            raise CalibrationError("no such directory (expected the output of edgekit calibrate)",
                                   param=param, value=directory)
        if not meta_path.is_file():
            raise CalibrationError(f"{CALIB_META} missing (expected the output of edgekit calibrate)",
                                   param=param, value=directory)
        from edgekit.pipeline import read_json_object

        meta = read_json_object(meta_path, CalibrationError)
        _check_meta(meta, meta_path)
        if not meta["components"]:
            raise CalibrationError("holds no calibration rows", param=param, value=directory)
        if model_dir is not None:
            model = ModelDir.unchecked(model_dir)
            _check_rows_fit_configs(meta, directory, model, param)
            _check_guidance_rows(meta, directory, model, param)
        calib = cls(directory, meta)
        if model_dir is not None and check_hash:
            calib.check_model_digest(model_dir, param)
        return calib

    def check_model_digest(self, model_dir: Path, param: str = "calib") -> None:
        """Refuse rows captured from another model than ``model_dir`` by its files' digest: reads every weight
        byte, so a command runs its cheap refusals first (flags, --out, memory) and this one last."""
        if self.meta["model"].get("sha256") != ModelDir.unchecked(model_dir).sha256:
            raise CalibrationError(f"captured from another model ({self.meta['model'].get('path')}); re-run edgekit "
                                   f"calibrate on {model_dir}", param=param, value=self.directory)

    def components(self) -> list[str]:
        return list(self.meta["components"])

    def load(self, component: str) -> dict[str, np.ndarray]:
        """All rows of one component, checked against the shard checksums."""
        info = self.meta["components"].get(component)
        if info is None:
            raise CalibrationError(f"{self.directory}: no rows for '{component}' (has {self.components()})")
        parts: dict[str, list[np.ndarray]] = {}
        for shard in info["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file():
                raise CalibrationError(f"{path}: shard missing")
            if sha256_file(path) != shard["sha256"]:
                raise CalibrationError(f"{path}: shard checksum differs from {CALIB_META}")
            with np.load(path) as data:
                for k in data.files:
                    parts.setdefault(k, []).append(data[k])
        return {k: np.concatenate(v) for k, v in parts.items()}
