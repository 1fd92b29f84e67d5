"""One reader for a diffusers pipeline directory: opened once, checked once, asked everything the stages need.

``ModelDir.open(path)`` checks the directory (layout, every config, safetensors headers: the checks of
``edgekit.model_checks``) and answers from the files it read: ``model_index``, ``config(component)``, the UNet
layout, the structure of a pruned or slimmable model, the sampling defaults, the declared quality evaluators
and calibration prompts, the scheduler (its class named by model_index.json, as diffusers builds it) and one
sha256 over every file. Every JSON file is read once, through the bounded reader (``edgekit.safe_read``);
no other module reads ``model_index.json`` or a component's ``config.json``.

Instances are shared per process: one per resolved directory, kept while the directory is unchanged (the
size, mtime and inode of every file below it, the files the digest covers), so the whole model is hashed
once per process however many stages ask, and a directory rewritten in place (a test, a rerun of slim into
the same folder) gets fresh answers. ``ModelDir.of(x)`` takes a ModelDir or a path.
"""
from __future__ import annotations

import copy
import os
import threading
from functools import cached_property
from pathlib import Path

from edgekit.constants import EDGEKIT_DEFAULTS, MODEL_INDEX, PIPELINE_COMPONENTS
from edgekit.errors import InputError, ModelFormatError

# diffusers' folder names, in constants.PIPELINE_COMPONENTS order
UNET, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER = PIPELINE_COMPONENTS
CONFIG_FILE = "config.json"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"  # the scheduler's folder holds this name, not config.json
PROMPTS_FIELD = "calibration_prompts"  # edgekit_defaults.json: a prompts file inside the model directory
EVALUATORS_FIELD = "quality_evaluators"  # edgekit_defaults.json: extra quality evaluators the model declares
KNOWN_EVALUATORS = ("digits",)

_cache: dict[Path, "ModelDir"] = {}  # the most recently opened directories, oldest first
_lock = threading.Lock()
CACHED_DIRS = 16  # a run opens a handful (the source, a slim stage, a quantized one); a test process many


def _resolve(path, param: str) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise InputError(f"cannot be resolved ({exc})", param=param, value=path) from None


def _stamp(root: Path) -> tuple:
    """What changes when any file below ``root`` does: (relative path, size, mtime, inode) of each, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue  # a broken link: the checks name it
            out.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


class ModelDir:
    """A pipeline directory and every answer read from it (build with ``open``, ``of`` or ``unchecked``)."""

    def __init__(self, path: Path, stamp: tuple) -> None:
        self.path = path  # resolved
        self._stamp = stamp
        self._json: dict[str, object] = {}
        self._checked = False

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    def __str__(self) -> str:  # in messages and records, the directory
        return str(self.path)

    def __fspath__(self) -> str:  # a ModelDir passes where a path is expected (open, Path(), os functions)
        return str(self.path)

    # -- getting one ------------------------------------------------------------------------------------------
    @classmethod
    def unchecked(cls, path: Path | str) -> "ModelDir":
        """The shared instance for ``path`` without the model checks (for readers of one file that also serve
        directories which are no complete pipeline: a defaults file alone, an output being written)."""
        root = _resolve(path, "model_dir")
        stamp = _stamp(root) if root.is_dir() else ()
        with _lock:
            known = _cache.get(root)
            if known is not None and known._stamp == stamp:
                _cache[root] = _cache.pop(root)  # the most recent last
                return known
            fresh = cls(root, stamp)
            _cache.pop(root, None)
            _cache[root] = fresh
            while len(_cache) > CACHED_DIRS:
                _cache.pop(next(iter(_cache)))
            return fresh

    @classmethod
    def open(cls, path: Path | str | None = None, param: str = "model_dir") -> "ModelDir":
        """The checked directory (None: the embedded default model), or one error naming ``param`` and what is
        wrong. The checks run once per directory per process."""
        if path is None:
            from edgekit.pipeline import default_model_dir

            path = default_model_dir()
        from edgekit.model_checks import check_location

        root = _resolve(path, param)
        check_location(root, str(path), param)  # before anything below it is listed
        model = cls.unchecked(root)
        model.check(param)
        return model

    @classmethod
    def of(cls, model: "ModelDir | Path | str | None", param: str = "model_dir") -> "ModelDir":
        """``model`` as a checked ModelDir: a ModelDir (refreshed when its directory changed) or a path."""
        return cls.open(model.path if isinstance(model, ModelDir) else model, param)

    def check(self, param: str = "model_dir") -> "ModelDir":
        """The model checks (edgekit.model_checks), once per instance."""
        if not self._checked:
            from edgekit.model_checks import check_layout, check_model_configs

            check_layout(self.path, param, self._read)
            check_model_configs(self.path, self._read)
            self._checked = True
        return self

    # -- files -----------------------------------------------------------------------------------------------
    def _read(self, rel: str):
        """The parsed JSON object at ``rel`` (relative to the directory), read once, bounded, and refused when
        it leads out of the model directory."""
        if rel not in self._json:
            from edgekit.model_checks import check_inside
            from edgekit.pipeline import read_json_object

            path = self.path / rel
            check_inside(path, self.path)
            self._json[rel] = read_json_object(path)
        return self._json[rel]

    def has(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def config_path(self, component: str) -> Path:
        """The file holding ``component``'s configuration (scheduler: scheduler_config.json)."""
        name = SCHEDULER_CONFIG_FILE if component == SCHEDULER else CONFIG_FILE
        return self.path / component / name

    def config(self, component: str) -> dict:
        """``component``'s configuration (a copy: callers may edit it), or a ModelFormatError naming the file."""
        path = self.config_path(component)
        if not path.is_file():
            raise ModelFormatError(f"{path}: missing (the {component}'s configuration)")
        return copy.deepcopy(self._read(path.relative_to(self.path).as_posix()))

    @property
    def model_index(self) -> dict:
        if not self.has(MODEL_INDEX):
            raise ModelFormatError(f"not a diffusers pipeline directory ({MODEL_INDEX} missing)", param="model_dir",
                                   value=self.path)
        return copy.deepcopy(self._read(MODEL_INDEX))

    @property
    def defaults_file(self) -> dict:
        """edgekit_defaults.json (every key optional; a copy), {} when the model ships none."""
        if not self.has(EDGEKIT_DEFAULTS):
            return {}
        return copy.deepcopy(self._read(EDGEKIT_DEFAULTS))

    # -- answers ---------------------------------------------------------------------------------------------
    @property
    def unet_config(self) -> dict:
        """The UNet's config.json (a copy)."""
        return self.config(UNET)

    @cached_property
    def unet_layout(self):
        from edgekit.unet_layout import layout_of_config

        return layout_of_config(self.unet_config)

    @cached_property
    def guidance_dim(self) -> int | None:
        """The width of the guidance embedding the UNet takes (its time_cond_proj_dim), or None."""
        from edgekit.components.unet import guidance_dim

        return guidance_dim(self.unet_config) if self.config_path(UNET).is_file() else None

    @cached_property
    def image_side(self) -> int:
        """The side of the images the model generates: its latent side times the VAE's downsampling (2 per block
        after the first)."""
        size = self.unet_config.get("sample_size", 64)
        size = max(size) if isinstance(size, list) else size
        blocks = self.config(VAE).get("block_out_channels") or [0] * 4
        return int(size) * 2 ** (len(blocks) - 1)

    @cached_property
    def structure(self):
        """The per-layer widths of a pruned or slimmable model (structure.json), else None."""
        from edgekit.structure import STRUCTURE_FILE, Structure

        if not self.has(STRUCTURE_FILE):
            return None
        from edgekit.safe_read import read_json

        data = read_json(self.path / STRUCTURE_FILE, error=ModelFormatError)  # any JSON value: from_dict names it
        return Structure.from_dict(data, str(self.path / STRUCTURE_FILE))

    @cached_property
    def sampling_defaults(self):
        from edgekit.pipeline import parse_sampling_defaults

        return parse_sampling_defaults(self.defaults_file, self.path / EDGEKIT_DEFAULTS)

    @cached_property
    def evaluators(self) -> tuple[str, ...]:
        """The extra quality evaluators the model declares (edgekit_defaults.json "quality_evaluators"), checked."""
        path = self.path / EDGEKIT_DEFAULTS
        names = self.defaults_file.get(EVALUATORS_FIELD, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelFormatError(f"{path}: '{EVALUATORS_FIELD}' is {names!r}, expected a list of names "
                                   f"from {list(KNOWN_EVALUATORS)}")
        unknown = [n for n in names if n not in KNOWN_EVALUATORS]
        if unknown:
            raise ModelFormatError(f"{path}: '{EVALUATORS_FIELD}' names {unknown}, known: {list(KNOWN_EVALUATORS)}")
        return tuple(names)

    @cached_property
    def prompts_file(self) -> Path | None:
        """The prompts file the model declares (edgekit_defaults.json "calibration_prompts", inside the
        directory), else None."""
        path = self.path / EDGEKIT_DEFAULTS
        name = self.defaults_file.get(PROMPTS_FIELD)
        if name is None:
            return None
        declared = self.path / str(name)
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts or not declared.is_file():
            raise ModelFormatError(f"{path}: '{PROMPTS_FIELD}' is {name!r}, expected the name of a prompts file "
                                   f"inside {self.path}")
        try:  # the name is checked as text above; a symlink (or a linked folder on its way) may still lead out
            real = declared.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ModelFormatError(f"{path}: '{PROMPTS_FIELD}' {name!r} cannot be resolved ({exc})") from None
        if self.path not in real.parents:
            raise ModelFormatError(f"{path}: '{PROMPTS_FIELD}' {name!r} is a symlink to {real}, outside {self.path}; "
                                   "expected a prompts file inside the model directory")
        return self.path / str(name)

    @cached_property
    def scheduler_class(self) -> str:
        """The scheduler class diffusers builds: the one model_index.json names (scheduler_config.json's
        _class_name is only the class that saved it)."""
        entry = self.model_index.get(SCHEDULER)
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str):
            raise ModelFormatError(f"{self.path / MODEL_INDEX}: component '{SCHEDULER}' missing")
        return entry[1]

    @property
    def scheduler_config(self) -> dict:
        """scheduler_config.json with ``_class_name`` the class diffusers builds (``scheduler_class``; a copy)."""
        config = self.config(SCHEDULER)
        if self.has(MODEL_INDEX):
            config["_class_name"] = self.scheduler_class
        return config

    def scheduler(self):
        """A new diffusers scheduler, as the pipeline builds it."""
        from edgekit.pipeline import scheduler_from_config

        return scheduler_from_config(self.scheduler_config)

    def check_steps(self, steps: int, param: str = "steps") -> int:
        """Refuse a step count this model's scheduler cannot take, naming its limit."""
        from edgekit.pipeline import check_scheduler_steps

        return check_scheduler_steps(self.scheduler_config, steps, param)

    @cached_property
    def sha256(self) -> str:
        """One digest over every file of the model (edgekit.fsutil.sha256_tree), computed once per process."""
        from edgekit.fsutil import sha256_tree

        return sha256_tree(self.path)


def forget() -> None:
    """Drop every shared instance (the next ``open`` re-reads and re-checks)."""
    with _lock:
        _cache.clear()
