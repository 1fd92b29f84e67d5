"""The rows the distillation loops (edgekit.compress.distill) train on: UNet inputs from a calibration directory
or captured now, the (prompted, empty-prompt) pairs of classifier-free guidance, the seeded global batches
every process deals alike, and the teacher's outputs computed up front for lean training.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError, InputError


def calibration_rows(pipe, model_dir: Path, calib_dir: Path | None, seed: int = 0, samples: int = 22,
                     max_rows: int = 512) -> dict:
    """UNet input rows from an ``edgekit calibrate`` directory, or captured now from the default prompts."""
    from edgekit.calibration import CalibrationConfig, CalibrationSet, capture, default_prompts_file, read_prompts
    from edgekit.components import TEXT_ENCODER, UNET, VAE_DECODER
    from edgekit.modeldir import ModelDir
    from edgekit.progress import current as current_progress

    model = ModelDir.unchecked(model_dir)  # the model the pipeline was loaded from, checked then
    if calib_dir is not None:
        return CalibrationSet.open(calib_dir, model).load(UNET)
    defaults = model.sampling_defaults
    prompts_file = default_prompts_file(model)
    config = CalibrationConfig(prompts=tuple(read_prompts(prompts_file)), steps=defaults.steps, samples=samples,
                               guidance_scale=defaults.guidance_scale, seed=seed,
                               max_rows={TEXT_ENCODER: 16, UNET: max_rows, VAE_DECODER: 16})
    with tempfile.TemporaryDirectory() as tmp:
        capture(pipe, config, Path(tmp), model, prompts_file, progress=current_progress())
        return CalibrationSet.open(tmp).load(UNET)


def _dataset(rows: dict, keep=None, indexed: bool = False):
    """(sample, timestep, text states) per row; ``indexed``: each row's position in the set as well."""
    import torch

    keep = slice(None) if keep is None else keep
    tensors = [torch.as_tensor(rows["sample"][keep]).float(), torch.as_tensor(rows["timestep"][keep]).float(),
               torch.as_tensor(rows["encoder_hidden_states"][keep]).float()]
    if indexed:
        tensors.append(torch.arange(len(tensors[0])))
    return torch.utils.data.TensorDataset(*tensors)


def guidance_pairs(rows: dict):
    """(prompted row indices, the empty-prompt embedding) when the rows come from classifier-free guidance
    (calibration marks the unconditional half), else None. Training on (prompted, empty) pairs lets the
    loss weigh the guidance direction eps(prompt) - eps(empty) on its own: it is small next to eps, so a
    loss on eps alone barely sees it, yet it is what decides which digit appears (guidance multiplies it)."""
    import numpy as np
    import torch

    flags = rows.get("is_uncond")
    if flags is None or not np.any(flags == 1) or not np.any(flags == 0):
        return None
    empty = torch.as_tensor(rows["encoder_hidden_states"][int(np.flatnonzero(flags == 1)[0])]).float()
    return np.flatnonzero(flags == 0), empty


def _loader(dataset, batch_size: int, seed: int, accelerator):
    """Shuffled global batches of ``batch_size`` rows; ``accelerator.prepare`` gives each process its equal
    share of every batch. The permutation comes from one generator seeded here, identical in every process
    and for any process count (Accelerate would otherwise seed it from each run's global RNG)."""
    import torch

    processes = accelerator.num_processes
    if batch_size % processes:
        raise InputError(f"the global batch must split evenly over the {processes} processes", param="batch_size",
                         value=batch_size)
    if len(dataset) < batch_size:
        raise InputError(f"larger than the {len(dataset)} training rows", param="batch_size", value=batch_size)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       generator=generator)


def training_batches(rows: int, batch_size: int, steps: int, seed: int) -> list:
    """The row positions of each of the first ``steps`` global batches ``_loader`` deals (the same shuffles:
    one generator seeded with ``seed``, incomplete batches dropped)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.utils.data.DataLoader(range(rows), batch_size=batch_size, shuffle=True, drop_last=True,
                                        generator=generator)
    batches = _endless(order)
    return [next(batches) for _ in range(steps)]


class TeacherOutputs:
    """The frozen teacher's predictions for the rows a slimmable training run will take (its first ``steps``
    batches), computed up front one prompted row and its empty-prompt twin at a time, so the teacher's
    weights can be released before the student trains. Called with a batch's row positions, it returns what
    ``teacher(sample, t, ctx).sample`` returns for that batch ([prompted rows..., their twins...] with
    guidance pairs)."""

    def __init__(self, teacher, rows: dict, batch_size: int, steps: int, seed: int = 0,
                 guidance_weight: float = 1.0):
        import torch

        from edgekit.progress import track

        pairs = guidance_pairs(rows) if guidance_weight > 0 else None
        self.paired = pairs is not None
        dataset = _dataset(rows, pairs[0] if pairs else None)
        used = list(dict.fromkeys(int(i) for batch in training_batches(len(dataset), batch_size, steps, seed)
                                  for i in batch))
        self.position = {row: k for k, row in enumerate(used)}
        teacher = teacher.eval().requires_grad_(False)
        outputs = []
        with torch.no_grad():
            for row in track(used, "slim: teacher outputs"):
                sample, t, ctx = (x.unsqueeze(0) for x in dataset[row])
                if pairs:
                    sample, t, ctx = torch.cat([sample, sample]), torch.cat([t, t]), torch.cat([ctx, pairs[1][None]])
                outputs.append(teacher(sample, t, ctx).sample)
        self.outputs = torch.stack(outputs)  # (rows, 2 with twins else 1, C, H, W)

    def __len__(self) -> int:
        return len(self.position)

    def __call__(self, rows):
        import torch

        missing = [int(r) for r in rows if int(r) not in self.position]
        if missing:
            raise EdgekitError(f"the teacher's outputs were computed for other batches (rows {missing[:5]} "
                               "missing): same rows, batch size, steps and seed as the training run are needed")
        picked = self.outputs[torch.tensor([self.position[int(r)] for r in rows])]
        return torch.cat([picked[:, 0], picked[:, 1]]) if self.paired else picked[:, 0]


def _endless(loader):
    while True:
        yield from loader
