"""A few-step student of the embedded digits model: the 20-step, guidance-2 teacher distilled into a UNet
that samples in 1, 2 or 4 deterministic DDIM steps (trailing timesteps) without classifier-free guidance.

Trajectory distillation (Luhman & Luhman, 2021, "Knowledge distillation in iterative generative models"):
the teacher maps seeded initial noise to its final latents (DPMSolverMultistep, 20 steps, guidance 2, two
UNet passes per step); the student, initialised from the teacher's weights, is trained through its own
unrolled DDIM steps (1, 2 or 4, drawn per batch) with the prompt alone to land on the same latents. Guidance
is distilled with the steps, so the student runs 1-4 UNet passes where the teacher runs 40. The training
prompts leave out the evaluation phrasing (edgekit.zoo.tiny_digits.data.EVAL_TEMPLATE), and the evaluation
seeds are not among the training noise, so the reported accuracy is held out. The loop runs under HF
Accelerate, single process on a CPU here.

    .venv/bin/python scripts/train_tiny_digits_fewstep.py [--out DIR] [--train-steps N] [--pairs N]

writes (by default into edgekit/zoo/tiny_digits/fewstep/, the shipped student) a diffusers pipeline directory (the
teacher's VAE, text encoder and tokenizer; the student UNet; DDIMScheduler with trailing spacing) whose
edgekit_defaults.json offers 1, 2 and 4 steps at guidance 1. The student's scheduler and its differentiable DDIM
steps are edgekit.zoo.tiny_digits.recipe's (the tests check them against diffusers).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.constants import EDGEKIT_DEFAULTS
from edgekit.zoo.tiny_digits import FEWSTEP_DIR, PIPELINE_DIR
from edgekit.zoo.tiny_digits.recipe import STUDENT_STEPS, ddim_unrolled, student_scheduler, write_sampling_defaults

TEACHER_STEPS = 20
TEACHER_GUIDANCE = 2.0
NOISE_SEED0 = 100_000  # training noise seeds start here; evaluation grids use seeds from 0


def training_pairs(pipe, n: int, seed: int, progress=None) -> dict:
    """Teacher targets: ``n`` (prompt, initial noise, final latent) triples, prompts without the eval phrasing."""
    from edgekit.noise import initial_latents
    from edgekit.zoo.tiny_digits.data import EVAL_TEMPLATE, PROMPT_TEMPLATES, prompt_for

    rng = np.random.default_rng(seed)
    templates = [t for t in PROMPT_TEMPLATES if t != EVAL_TEMPLATE]
    digits = rng.integers(0, 10, size=n)
    prompts = [prompt_for(int(d), templates[int(rng.integers(len(templates)))]) for d in digits]
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    noise = torch.from_numpy(initial_latents(range(NOISE_SEED0, NOISE_SEED0 + n), shape))
    targets = []
    batch = 64
    for start in range(0, n, batch):
        with torch.inference_mode():
            out = pipe(prompt=prompts[start:start + batch], num_inference_steps=TEACHER_STEPS,
                       guidance_scale=TEACHER_GUIDANCE, latents=noise[start:start + batch].clone(), output_type="latent")
        targets.append(out.images.float())
        if progress is not None:
            progress(start + batch, n)
    with torch.inference_mode():
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids)[0].float()
    return {"prompts": prompts, "digits": digits, "noise": noise, "hidden": hidden, "targets": torch.cat(targets)}


def distill(teacher_unet, pairs: dict, train_steps: int, lr: float, batch_size: int, seed: int, log=None):
    """The student UNet (a copy of the teacher's) trained to land on the teacher's latents in 1-4 steps."""
    import copy

    from edgekit.compress.distill import _accelerator, _schedule

    accelerator = _accelerator(seed)
    student = copy.deepcopy(teacher_unet).float().train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    scheduler = _schedule(optimizer, train_steps)
    student, optimizer = accelerator.prepare(student, optimizer)
    gen = torch.Generator().manual_seed(seed)
    n = len(pairs["targets"])
    scale = float(pairs["targets"].pow(2).mean())
    history = []
    for step in range(train_steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        steps = STUDENT_STEPS[int(torch.randint(0, len(STUDENT_STEPS), (1,), generator=gen))]
        out = ddim_unrolled(student, pairs["noise"][idx], pairs["hidden"][idx], steps)
        loss = torch.nn.functional.mse_loss(out, pairs["targets"][idx]) / scale
        optimizer.zero_grad()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append((steps, loss.item()))
        if log is not None and (step + 1) % 50 == 0:
            recent = history[-50:]
            log(f"step {step + 1}/{train_steps}: relative mse " + ", ".join(
                f"{s} steps {np.mean([l for k, l in recent if k == s]):.4f}" for s in STUDENT_STEPS
                if any(k == s for k, _ in recent)))
    return accelerator.unwrap_model(student).eval(), history


def save_student(out: Path, teacher_dir: Path, student_unet, report: dict) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir, safety_checker=None, requires_safety_checker=False)
    pipe.register_modules(unet=student_unet, scheduler=student_scheduler())
    # stored as the teacher is (scripts/train_tiny_digits.py, save_pipeline): float16, the text encoder float32;
    # the evaluation below loads these stored weights
    pipe.to(torch.float16)
    pipe.text_encoder.to(torch.float32)
    pipe.save_pretrained(out, safe_serialization=True)
    write_sampling_defaults(out)  # the digit evaluator and calibration prompts, as the teacher declares them
    defaults = json.loads((out / EDGEKIT_DEFAULTS).read_text())
    defaults.update({"guidance_scale": 1.0, "num_inference_steps": 2, "offered_steps": list(STUDENT_STEPS)})
    (out / EDGEKIT_DEFAULTS).write_text(json.dumps(defaults, indent=2) + "\n")
    (out / "fewstep.json").write_text(json.dumps(report, indent=2) + "\n")


def evaluate(teacher_dir: Path, student_dir: Path, samples_per_digit: int, seed: int, repeats: int = 3) -> dict:
    """Held-out prompt accuracy (the digit classifier) and seconds per image, student at 1/2/4 steps vs the
    teacher at its 20 steps and guidance 2, both as torch pipelines on this CPU."""
    from edgekit.pipeline import load_pipeline
    from edgekit.quality.digits import evaluate_pipe, grid

    rows = {}
    for name, directory, steps, guidance in [("teacher", teacher_dir, TEACHER_STEPS, TEACHER_GUIDANCE),
                                             *[("student", student_dir, s, 1.0) for s in STUDENT_STEPS]]:
        pipe = load_pipeline(directory)
        report = evaluate_pipe(pipe, steps, samples_per_digit, seed, guidance)
        prompts, _, _ = grid(10, seed)  # one prompt per digit
        times = []
        for r in range(repeats):  # end to end, one image at a time (text encoder, UNet loop, VAE)
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=prompts[r % len(prompts)], num_inference_steps=steps, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(r), output_type="np")
            times.append(time.perf_counter() - start)
        rows[f"{name}-{steps}"] = {"steps": steps, "guidance_scale": guidance,
                                   "prompt_accuracy": report.prompt_accuracy,
                                   "frechet_distance": report.frechet_distance, "n_images": report.n_images,
                                   "seconds_per_image": float(np.median(times))}
    teacher = rows[f"teacher-{TEACHER_STEPS}"]
    for row in rows.values():
        row["speedup_vs_teacher"] = teacher["seconds_per_image"] / row["seconds_per_image"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FEWSTEP_DIR)
    parser.add_argument("--teacher", type=Path, default=PIPELINE_DIR)
    parser.add_argument("--pairs", type=int, default=256, help="teacher (noise, latent) pairs")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--samples-per-digit", type=int, default=20, help="evaluation images per digit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from edgekit.pipeline import load_pipeline

    torch.manual_seed(args.seed)
    started = time.time()
    teacher = load_pipeline(args.teacher)
    pairs = training_pairs(teacher, args.pairs, args.seed)
    data_s = time.time() - started
    print(f"teacher pairs: {args.pairs} in {data_s:.0f} s", flush=True)
    student, history = distill(teacher.unet, pairs, args.train_steps, args.lr, args.batch_size, args.seed,
                               log=lambda line: print(line, flush=True))
    train_s = time.time() - started - data_s
    out = args.out.resolve()
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    report = {"method": "trajectory distillation of the guided teacher into 1/2/4-step DDIM (trailing), HF Accelerate",
              "teacher": {"steps": TEACHER_STEPS, "guidance_scale": TEACHER_GUIDANCE, "scheduler": "DPMSolverMultistep"},
              "pairs": args.pairs, "train_steps": args.train_steps, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "torch_threads": torch.get_num_threads(), "teacher_pairs_s": round(data_s, 1),
              "train_s": round(train_s, 1),
              "final_relative_mse": {str(s): float(np.mean([l for k, l in history[-100:] if k == s] or [np.nan]))
                                     for s in STUDENT_STEPS}}
    save_student(staging, args.teacher, student, report)
    report["evaluation"] = evaluate(args.teacher, staging, args.samples_per_digit, args.seed)
    (staging / "fewstep.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(json.dumps(report["evaluation"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
