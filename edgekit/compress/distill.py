"""Distillation loops under HF Accelerate: recovery of a pruned UNet from its unpruned teacher, and sandwich
training of a slimmable UNet with in-place distillation.

Both train on real UNet inputs (calibration rows: noisy latents along the teacher's own sampling
trajectories, timesteps, text embeddings with and without the prompt; edgekit.compress.training_rows), so no
dataset is needed. The loops
go through ``accelerate`` (prepare, backward, unwrap), so the same code runs single-process on this CPU
and under ``accelerate launch`` on several GPUs, CPU processes or machines.

Several processes compute what one process computes, up to float summation order: ``--batch-size`` is the
global batch, each step's shuffled batch (one seeded generator, the same in every process) is split into
equal shards (Accelerate's ``split_batches``; incomplete batches are dropped so shards stay equal), DDP
averages the shards' gradients, and the loss normalisers (mean squares of the teacher's outputs) are
averaged over the global batch before dividing, as one process would compute them. Only the main process
writes outputs (``is_main_process``).

The slimmable training has a lean memory mode (``memory="lean"``) for UNets whose training would not fit the
host otherwise (SD-1.5's 860M parameters on 24 GB): the teacher's outputs for the rows the run will train on
are computed first, so its weights can be released before training (``TeacherOutputs``); each forward pass
takes one prompted row and its empty-prompt twin, the batch's gradients accumulated (the same loss as the
whole batch at once: its normalisers come from the teacher's outputs for the whole batch); the UNet's blocks
are recomputed in the backward pass instead of keeping their activations (diffusers' gradient
checkpointing); and Adafactor (factored second moments, no first moment, Adam's absolute learning rate)
replaces AdamW's two full-size moments.
"""
from __future__ import annotations

import contextlib
import copy
import os
import random
import tempfile
import time
from pathlib import Path

from edgekit.compress.training_rows import TeacherOutputs, _dataset, _endless, _loader, guidance_pairs
from edgekit.errors import EdgekitError, InputError


MEMORY_MODES = ("standard", "lean")


def _relative(out, target, scale):
    import torch.nn.functional as F

    return F.mse_loss(out, target) / scale


def is_main_process() -> bool:
    """False in every process but the first of a launch group (``accelerate launch``, torchrun): outputs are
    written once. Read from the launcher's environment, so it holds before and without an Accelerator."""
    return int(os.environ.get("RANK", "0")) == 0


def _accelerator(seed: int):
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Without a GPU, Accelerate treats a multi-process launch as one plain process per rank (each training
    # alone on the whole batch) unless told to use CPU processes (gloo).
    cpu = world > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="no", cpu=cpu,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if accelerator.num_processes != world:
        raise EdgekitError(f"launched as {world} processes but Accelerate set up {accelerator.num_processes} "
                           f"({accelerator.distributed_type}); check the launcher's settings (accelerate config)")
    set_seed(seed)
    return accelerator


def _global_mean(accelerator, values):
    """Per-process means of detached values (equal shards) averaged into global-batch means."""
    import torch

    stacked = torch.stack([v.detach().reshape(()) for v in values])
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="mean")
    return list(stacked.unbind())


def _global_losses(accelerator, losses: list) -> list:
    """Each step's logged loss as the global batch's (the mean over processes)."""
    import torch

    if not losses or accelerator.num_processes == 1:
        return losses
    logged = torch.tensor(losses, dtype=torch.float64, device=accelerator.device)  # NCCL reduces GPU tensors only
    return accelerator.reduce(logged, reduction="mean").tolist()


def _schedule(optimizer, steps: int, warmup_fraction: float = 0.05):
    """Linear warm-up over the first few percent of ``steps``, then cosine decay to a tenth of the peak rate:
    short runs stay stable and long ones settle instead of oscillating at the peak rate."""
    import math

    import torch

    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _block_outputs(unet, store: list):
    """Hooks keeping each down/mid/up block's hidden-state output (the residual stream: same width in a
    pruned student and its teacher)."""
    handles = []
    blocks = list(unet.down_blocks) + ([unet.mid_block] if unet.mid_block is not None else []) + list(unet.up_blocks)
    for block in blocks:
        def hook(module, args, out):
            store.append(out[0] if isinstance(out, tuple) else out)
        handles.append(block.register_forward_hook(hook))
    return handles


def recover(student, teacher, rows: dict, steps: int, lr: float = 3e-4, batch_size: int = 16,
            feature_weight: float = 0.5, seed: int = 0, progress=None) -> dict:
    """Train ``student`` (in place) to match ``teacher``'s noise prediction (output distillation) and its
    block outputs (feature distillation, each term normalised by the teacher feature's mean square)."""
    import torch
    import torch.nn.functional as F

    if steps <= 0:
        return {"steps": 0}
    accelerator = _accelerator(seed)
    teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    student.train().requires_grad_(True)
    loader = _loader(_dataset(rows), batch_size, seed, accelerator)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    scheduler = _schedule(optimizer, steps)
    student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    raw_student = accelerator.unwrap_model(student)
    s_feats, t_feats = [], []
    handles = _block_outputs(raw_student, s_feats) + _block_outputs(teacher, t_feats)
    losses = []
    started = time.perf_counter()
    task = progress.add_task("recover", total=steps) if progress else None
    try:
        batches = _endless(loader)
        for step in range(steps):
            sample, t, ctx = next(batches)
            s_feats.clear()
            t_feats.clear()
            with torch.no_grad():
                target = teacher(sample, t, ctx).sample
            out = student(sample, t, ctx).sample
            scale, *feat_scales = _global_mean(accelerator, [target.pow(2).mean()] +
                                               [tf.pow(2).mean() for tf in t_feats])
            loss_out = F.mse_loss(out, target) / scale.clamp_min(1e-8)
            loss_feat = sum(F.mse_loss(s, tf) / fs.clamp_min(1e-8) for s, tf, fs in zip(s_feats, t_feats, feat_scales))
            loss = loss_out + feature_weight * loss_feat / max(1, len(t_feats))
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss_out.detach()))
            if task is not None:
                progress.update(task, advance=1)
    finally:
        for h in handles:
            h.remove()
    student = accelerator.unwrap_model(student).eval()
    losses = _global_losses(accelerator, losses)
    window = max(1, min(10, steps // 4))
    return {"steps": steps, "lr": lr, "batch_size": batch_size, "feature_weight": feature_weight,
            "output_loss_first": sum(losses[:window]) / window, "output_loss_last": sum(losses[-window:]) / window,
            "seconds": round(time.perf_counter() - started, 1), "processes": accelerator.num_processes,
            "device": str(accelerator.device)}


class SlimmableUNet:
    """Runs one weight set at several widths: each width is a physically sliced structural copy whose
    parameters are, on every call, differentiable slices of the full-width ones (torch.func.functional_call),
    so gradients from every width land in the single stored weight set."""

    def __init__(self, unet, widths, scope: str = "all", checkpointing: bool = False):
        import torch

        from edgekit.unet_slicing import plan_for_width, sliced_unet

        class _Wrapper(torch.nn.Module):
            def __init__(inner, full):
                super().__init__()
                inner.full = full
                inner.plans = {}
                inner.shapes = {}  # width -> structural copy, kept outside the module tree (no parameters)

            def forward(inner, sample, t, ctx, widths):
                from torch.func import functional_call

                from edgekit.unet_slicing import slice_tensor

                outputs = []
                params = dict(inner.full.named_parameters())
                for w in widths:
                    if w >= 1.0:
                        outputs.append(inner.full(sample, t, ctx).sample)
                        continue
                    plan = inner.plans[w]
                    sliced = {n: (slice_tensor(p, plan[n]) if n in plan else p) for n, p in params.items()}
                    outputs.append(functional_call(inner.shapes[w], sliced, (sample, t, ctx)).sample)
                return outputs

        self.module = _Wrapper(unet)
        for w in widths:
            if w < 1.0:
                plan = plan_for_width(unet, w, scope)
                self.module.plans[w] = plan
                self.module.shapes[w] = sliced_unet(unet, plan).requires_grad_(False)
        if checkpointing:  # blocks recomputed in the backward pass instead of keeping their activations
            unet.enable_gradient_checkpointing()
            for shape in self.module.shapes.values():
                shape.enable_gradient_checkpointing(_checkpoint_with_bound_weights)


def _checkpoint_with_bound_weights(module, *args):
    """Non-reentrant checkpoint of one block of a width's structural copy, with the weights it runs with bound
    in: that copy holds the differentiable slices of the full weights only inside ``functional_call``, and
    the backward pass recomputes the block after that call has returned (with the copy's own, stale, weights
    otherwise)."""
    from torch.func import functional_call
    from torch.utils.checkpoint import checkpoint

    bound = dict(module.named_parameters())
    return checkpoint(lambda *inputs: functional_call(module, bound, inputs), *args, use_reentrant=False)


def _optimizer(params, lr: float, memory: str):
    """AdamW; in the lean mode Adafactor as fine-tuning runs it with Adam's absolute learning rate
    (relative_step and scale_parameter off): no first moment and factored second moments instead of AdamW's
    8 bytes per parameter (the first step is the same sign-like step as Adam's)."""
    import torch

    if memory == "lean":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=0.0)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def train_slimmable(unet, teacher, rows: dict, widths, steps: int, lr: float = 3e-4, batch_size: int = 16,
                    seed: int = 0, progress=None, full_weight: float = 1.0, scope: str = "all",
                    guidance_weight: float = 1.0, memory: str = "standard", keep_best: bool = True) -> dict:
    """Sandwich rule with in-place distillation, in place on ``unet`` (full width, importance-ordered):
    each step runs the largest width (distilled from the frozen original ``teacher``, which anchors it),
    the smallest width and one random middle width (both distilled from the current full-width output).
    ``full_weight`` scales the full-width term: the narrow widths' gradients land in the same weights and,
    with few steps, pull the full width away from the teacher (measured; see the benchmark).
    ``guidance_weight``: with classifier-free-guidance rows, every prompted row runs with its empty-prompt
    twin and the guidance direction is distilled too (see ``guidance_pairs``).
    ``memory``: "standard" or "lean" (see the module's docstring); ``teacher`` may be the UNet or, computed
    for this run's rows, batch size, steps and seed, its ``TeacherOutputs`` (then the UNet can be gone).
    ``keep_best``: a run whose first batch measures worse after training than before (the widths' losses
    weighted as in training) ends on the weights it started from; its record says which it kept."""
    import torch

    widths = sorted(float(w) for w in widths)
    if steps <= 0:
        return {"steps": 0}
    if widths[-1] != 1.0:
        raise InputError("must include 1.0 (the full width every other width distils from)", param="widths",
                         value=",".join(f"{w:g}" for w in widths))
    if memory not in MEMORY_MODES:
        raise InputError(f"expected one of {', '.join(MEMORY_MODES)}", param="memory", value=memory)
    lean = memory == "lean"
    accelerator = _accelerator(seed)
    rng = random.Random(seed)
    if lean and not isinstance(teacher, TeacherOutputs):
        teacher = TeacherOutputs(teacher, rows, batch_size, steps, seed, guidance_weight)
    if not isinstance(teacher, TeacherOutputs):
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    unet.train().requires_grad_(True)
    slim = SlimmableUNet(unet, widths, scope, checkpointing=lean)
    pairs = guidance_pairs(rows) if guidance_weight > 0 else None
    indexed = isinstance(teacher, TeacherOutputs)
    loader = _loader(_dataset(rows, pairs[0] if pairs else None, indexed), batch_size, seed, accelerator)
    optimizer = _optimizer(unet.parameters(), lr, memory)
    scheduler = _schedule(optimizer, steps)
    model, optimizer, loader, scheduler = accelerator.prepare(slim.module, optimizer, loader, scheduler)
    middle = widths[1:-1]
    losses = {w: [] for w in widths}
    started = time.perf_counter()
    task = progress.add_task("slim", total=steps) if progress else None
    batches = _endless(loader)

    def targets(batch):
        """A batch's inputs (with their empty-prompt twins), the teacher's outputs and the loss normalisers."""
        sample, t, ctx, *positions = batch
        n = len(sample)
        if pairs:  # each prompted row with its empty-prompt twin: [prompted..., empty...]
            sample, t = torch.cat([sample, sample]), torch.cat([t, t])
            ctx = torch.cat([ctx, pairs[1].to(ctx.device).expand_as(ctx)])
        if indexed:
            target = teacher(positions[0]).to(sample.device)
        else:
            with torch.no_grad():
                target = teacher(sample, t, ctx).sample
        direction = direction_scale = None
        if pairs:
            direction = target[:n] - target[n:]
            scale, direction_scale = _global_mean(accelerator, [target.pow(2).mean(), direction.pow(2).mean()])
            direction_scale = direction_scale.clamp_min(1e-8)
        else:
            scale, = _global_mean(accelerator, [target.pow(2).mean()])
        return sample, t, ctx, n, target, direction, scale.clamp_min(1e-8), direction_scale

    def distance(out, goal, goal_direction, scale, direction_scale):
        term = _relative(out, goal, scale)
        if pairs:
            half = len(out) // 2
            goal_direction = goal[:half] - goal[half:] if goal_direction is None else goal_direction
            term = term + guidance_weight * _relative(out[:half] - out[half:], goal_direction, direction_scale)
        return term

    def passes(n):  # the lean mode runs one prompted row (and its twin) per pass
        return [slice(None)] if not lean else [slice(j, j + 1) for j in range(n)]

    def picker(n, part):  # a pass's rows: its prompted rows, then their twins
        return lambda x: torch.cat([x[:n][part], x[n:][part]]) if pairs else x[part]

    def held_losses(batch) -> dict:
        """Every width's loss against the teacher on ``batch``, without training (the keep-best measure)."""
        sample, t, ctx, n, target, direction, scale, direction_scale = targets(batch)
        totals = {w: 0.0 for w in widths}
        parts = passes(n)
        with torch.no_grad():
            for part in parts:
                pick = picker(n, part)
                outs = model(pick(sample), pick(t), pick(ctx), widths)
                for w, out in zip(widths, outs):
                    totals[w] += float(distance(out, pick(target), direction[part] if pairs else None, scale,
                                                direction_scale)) / len(parts)
        return totals

    def objective(per_width: dict) -> float:  # the training loss's own weighting of the widths
        return sum((full_weight if w >= 1.0 else 1.0) * v for w, v in per_width.items())

    # keep-best: the first batch is measured before and after training, and a run that ends worse than it
    # started (a few steps at a high learning rate can push every width off, full width included) gives back
    # the weights it started from; those wait on disk, not in memory (the lean mode's budget has no room)
    held = next(batches)
    before = held_losses(held)
    saved = tempfile.TemporaryDirectory(prefix="edgekit-slim-")
    start_file = Path(saved.name) / "start.safetensors"
    _save_weights(unet, start_file)
    try:
        for step in range(steps):
            sample, t, ctx, n, target, direction, scale, direction_scale = targets(held if step == 0 else next(batches))
            chosen = [1.0] + ([widths[0]] if widths[0] < 1.0 else []) + ([rng.choice(middle)] if middle else [])
            optimizer.zero_grad(set_to_none=True)
            # each pass's loss is its share of the batch's (equal shares of a mean), its gradients accumulated
            # (synchronised across processes once)
            parts = passes(n)
            step_losses = {w: 0.0 for w in chosen}
            share = 1.0 / len(parts)
            for k, part in enumerate(parts):
                pick = picker(n, part)
                outs = model(pick(sample), pick(t), pick(ctx), chosen)
                full = outs[0]
                anchor = distance(full, pick(target), direction[part] if pairs else None, scale, direction_scale)
                step_losses[1.0] += float(anchor.detach()) * share
                loss = full_weight * anchor
                for w, out in zip(chosen[1:], outs[1:]):
                    term = distance(out, full.detach(), None, scale, direction_scale)
                    loss = loss + term
                    step_losses[w] += float(term.detach()) * share
                with (accelerator.no_sync(model) if k < len(parts) - 1 else contextlib.nullcontext()):
                    accelerator.backward(loss * share)
            for w, value in step_losses.items():
                losses[w].append(value)
            optimizer.step()
            scheduler.step()
            if task is not None:
                progress.update(task, advance=1)
        after = held_losses(held)
        kept = "trained" if objective(after) <= objective(before) or not keep_best else "start"
        if kept == "start":
            _load_weights(unet, start_file)
    finally:
        saved.cleanup()
        if lean:
            unet.disable_gradient_checkpointing()
    accelerator.unwrap_model(model).full.eval()
    # the gradients, the optimizer's state and the widths' sliced copies go before the caller writes and reloads
    # the model (Accelerate keeps what it prepared until told): 8 to 13 bytes per parameter at the peak after
    unet.zero_grad(set_to_none=True)
    model = optimizer = loader = scheduler = slim = batches = None
    accelerator.free_memory()
    losses = {w: _global_losses(accelerator, v) for w, v in losses.items()}
    window = max(1, min(10, steps // 4))
    summary = {f"{w:g}": {"first": sum(v[:window]) / max(1, len(v[:window])), "last": sum(v[-window:]) / max(1, len(v[-window:]))}
               for w, v in losses.items() if v}
    return {"steps": steps, "lr": lr, "batch_size": batch_size, "full_weight": full_weight, "widths": widths,
            "rows": len(rows["sample"]), "guidance_weight": guidance_weight if pairs else 0.0, "loss": summary,
            "held_loss": {"rows": len(held[0]), "before": {f"{w:g}": v for w, v in before.items()},
                          "after": {f"{w:g}": v for w, v in after.items()}},
            "kept": kept,
            "memory": memory,
            "seconds": round(time.perf_counter() - started, 1), "processes": accelerator.num_processes,
            "device": str(accelerator.device)}


def _save_weights(unet, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({name: t.detach().contiguous().cpu() for name, t in unet.state_dict().items()}, str(path))


def _load_weights(unet, path: Path) -> None:
    """Back to the weights in ``path``, one tensor at a time, in place (the prepared modules keep theirs)."""
    import torch
    from safetensors import safe_open

    with torch.no_grad(), safe_open(str(path), framework="pt") as stored:
        for name, t in unet.state_dict().items():
            t.copy_(stored.get_tensor(name))


def frozen_copy(unet):
    return copy.deepcopy(unet).eval().requires_grad_(False)
