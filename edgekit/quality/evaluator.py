"""The one quality interface eval, package, bench and the report use, chosen per model, never per name:

- reference fidelity for every model (edgekit.quality.fidelity): PSNR and SSIM against the float model at
  full width and its default steps, same prompts, seeds and initial noise;
- CLIP score when the user gives a local CLIP directory (edgekit.quality.clip);
- the extras a model directory declares in edgekit_defaults.json, "quality_evaluators": the embedded
  digits model declares ["digits"] (prompt accuracy and Frechet distance, edgekit.quality.digits).

A caller builds one ``ModelQuality`` for the reference model, generates the candidate's images for its
``grid`` (torch: ``generate``; a bundle: its own sampler with the same prompts and seeds) and calls
``score``: the result's ``row`` is the table-row format of notes/schema (quality, ssim, and the extras).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import InputError
from edgekit.resources import shipped_path

MIN_SAMPLES = 2  # an interval of a mean needs two images
EVAL_PROMPTS_FILE = shipped_path("calibration_data", "eval_prompts.txt")  # checkout copy, else the wheel's


def declared_evaluators(model_dir: Path) -> tuple[str, ...]:
    """The extra evaluators ``model_dir`` declares (edgekit_defaults.json "quality_evaluators"), checked."""
    from edgekit.modeldir import ModelDir

    return (model_dir if isinstance(model_dir, ModelDir) else ModelDir.unchecked(model_dir)).evaluators


IMAGE_COPIES = 2  # the reference images and one candidate's, both held while a row is scored


def image_side(model_dir: Path) -> int:
    """The side of the images a model generates, read from its configs alone (edgekit.modeldir)."""
    from edgekit.modeldir import ModelDir

    return ModelDir.of(model_dir).image_side


def check_image_memory(samples: int, model_dir: Path, available: int | None = None) -> None:
    """Refuse, before any image is generated, a grid whose images cannot all be held: every quality number holds
    the reference's and the candidate's ``samples`` images (float32 RGB) at once."""
    import psutil

    side = image_side(model_dir)
    need = IMAGE_COPIES * samples * side * side * 3 * 4
    available = psutil.virtual_memory().available if available is None else available
    if need > available:
        raise InputError(f"its images need {need / 2**30:.1f} GiB in memory ({IMAGE_COPIES} copies of {samples:,} "
                         f"{side}x{side} float32 RGB images), more than the {available / 2**30:.1f} GiB available; "
                         "use fewer", param="samples", value=samples)


def check_grid_seeds(samples: int, seed: int) -> None:
    """Image i of a grid takes seed + i: the last one must still be a seed the noise generator takes."""
    from edgekit.noise import MASK

    if seed + samples - 1 > MASK:
        raise InputError(f"with {{samples}} {samples}: image i takes seed {seed} + i, past the largest seed {MASK}; "
                         f"use a seed up to {MASK - samples + 1}", param="seed", value=seed, mentions=("samples",))


@dataclass(frozen=True)
class EvalGrid:
    """What every candidate of one model generates: prompt i with seed i (and, for digits, the asked label)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    labels: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def general_grid(samples: int, seed: int) -> EvalGrid:
    """The general evaluation prompts (calibration_data/eval_prompts.txt, none of them calibration prompts),
    cycled to ``samples`` images with seeds seed, seed+1, ..."""
    from edgekit.calibration import read_prompts

    prompts = read_prompts(EVAL_PROMPTS_FILE, "evaluation prompts")
    return EvalGrid(tuple(prompts[i % len(prompts)] for i in range(samples)), tuple(seed + i for i in range(samples)))


@dataclass(frozen=True)
class Scores:
    row: dict  # the table-row keys: quality, ssim, extras (schema)
    detail: dict = field(default_factory=dict)  # what a report adds (per-digit accuracy, FD floor)


class ModelQuality:
    """The evaluators of one reference model, its grid and its (cached) reference images."""

    def __init__(self, reference_model: Path | str | None, samples: int, seed: int = 0, clip_dir: Path | None = None,
                 cache_root: Path | None = None, param: str = "model", guidance_scale: float | None = None,
                 progress=None) -> None:
        from edgekit.modeldir import ModelDir
        from edgekit.quality.fidelity import default_cache_root

        if samples < MIN_SAMPLES:
            raise InputError(f"quality intervals need at least {MIN_SAMPLES} images", param="samples", value=samples)
        from edgekit.limits import check_samples

        check_samples(samples)  # before any grid, prompt or image list is built
        check_grid_seeds(samples, seed)
        self.model = ModelDir.of(reference_model, param)
        self.model_dir = self.model.path
        check_image_memory(samples, self.model)  # the stage's known cost, before anything is generated
        self.defaults = self.model.sampling_defaults
        self.guidance_scale = self.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        self.extras = self.model.evaluators
        self.seed = seed
        self.cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
        self.progress = progress
        self.clip = None
        if clip_dir is not None:
            from edgekit.quality.clip import ClipScorer

            self.clip = ClipScorer(clip_dir)
        self.digits = None
        if "digits" in self.extras:
            from edgekit.quality import digits

            prompts, seeds, labels = digits.grid(samples, seed)
            self.grid = EvalGrid(tuple(prompts), tuple(seeds), tuple(labels))
            self.digits = digits.DigitsEvaluator()
        else:
            self.grid = general_grid(samples, seed)
        self._reference: np.ndarray | None = None

    @property
    def reference_label(self) -> str:
        return f"float torch, width 1.00, {self.defaults.steps} steps"

    def evaluators(self) -> list[dict]:
        """Which evaluator makes which numbers (for reports)."""
        from edgekit.quality import fidelity

        out = [{"name": fidelity.NAME, "numbers": ["psnr_db", "ssim"],
                "description": f"PSNR/SSIM vs the {self.reference_label} image, same prompt, seed and noise"}]
        if self.digits is not None:
            out.append({"name": self.digits.name, "numbers": ["prompt_accuracy", "frechet_distance"],
                        "description": self.digits.description})
        if self.clip is not None:
            out.append({"name": self.clip.name, "numbers": ["clip_score"], "description": self.clip.description})
        return out

    def latent_shape(self) -> tuple[int, int, int]:
        return self.model.unet_layout.latent_shape

    def generate(self, pipe, steps: int, what: str = "eval") -> np.ndarray:
        """The candidate ``pipe``'s images for the grid (torch), with the shared initial noise."""
        from edgekit.quality.fidelity import generate_with_noise

        task = self.progress.add_task(what, total=len(self.grid)) if self.progress else None
        return generate_with_noise(pipe, list(self.grid.prompts), list(self.grid.seeds), steps,
                                   self.guidance_scale, self.latent_shape(), batch_size=25,
                                   on_batch=(lambda k: self.progress.update(task, advance=k)) if task is not None else None)

    def reference(self) -> np.ndarray:
        """The reference images: from the cache, else generated by the float model at full width."""
        if self._reference is None:
            from edgekit.pipeline import load_pipeline
            from edgekit.quality.fidelity import cached_reference, reference_key

            key = reference_key(self.model.sha256, self.defaults.steps, self.guidance_scale,
                                self.grid.prompts, self.grid.seeds, self.latent_shape())
            self._reference = cached_reference(
                self.cache_root, key,
                lambda: self.generate(load_pipeline(self.model), self.defaults.steps, "reference"))
        return self._reference

    def score(self, images: np.ndarray) -> Scores:
        from edgekit.quality.fidelity import fidelity

        reference = self.reference()
        if np.shape(images) != np.shape(reference):
            raise InputError(f"candidate images {np.shape(images)} and the reference model's {np.shape(reference)} "
                             f"differ in shape ({self.model_dir}): is it the model the candidate was made from?")
        row = fidelity(images, reference, self.reference_label)
        detail = {}
        if self.digits is not None:
            from edgekit.quality.digits import ROW_KEYS

            extra = self.digits.score(images, self.grid.labels)
            row.update({k: extra[k] for k in ROW_KEYS})
            detail = {k: v for k, v in extra.items() if k not in ROW_KEYS}
        if self.clip is not None:
            row["clip_score"] = self.clip.score(images, list(self.grid.prompts))
        return Scores(row=row, detail=detail)

    def score_pipe(self, pipe, steps: int | None = None) -> Scores:
        """Score a torch candidate (a width of the model, a quantized directory) at ``steps`` (default: the
        model's default)."""
        return self.score(self.generate(pipe, steps or self.defaults.steps))
