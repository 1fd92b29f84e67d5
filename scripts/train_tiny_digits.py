"""Train the embedded default model from scratch on scikit-learn's bundled digits, one seeded command.

    .venv/bin/python scripts/train_tiny_digits.py [--out DIR] [--vae-steps N] [--unet-steps N]

Writes (by default into edgekit/zoo/tiny_digits/, the shipped model) ``pipeline/`` (a diffusers
StableDiffusionPipeline directory), ``classifier/`` (the scoring classifier, trained only on the held-out
``classifier`` split) and ``training.json`` (times, losses, sizes). Default step counts fit in about 25 minutes on
2 CPU cores. What the model is (its configs, vocabulary, noise schedule, sampling defaults) is
edgekit.zoo.tiny_digits.recipe; this script only trains it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.zoo.tiny_digits import ZOO_DIR
from edgekit.zoo.tiny_digits.data import PROMPT_TEMPLATES, all_prompts, load_splits
from edgekit.zoo.tiny_digits.recipe import (MAX_TOKENS, SCHEDULER_BETAS, UNET_CONFIG, VAE_CONFIG, vocabulary,
                                            write_sampling_defaults)
from edgekit.zoo.tokenizer import write_clip_tokenizer


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn())


def _to_rgb(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).unsqueeze(1).repeat(1, 3, 1, 1)
    return x * 2.0 - 1.0


def train_vae(images: torch.Tensor, steps: int, seed: int, progress) -> tuple[object, dict]:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    kl_weight = 5e-4
    task = progress.add_task("VAE", total=steps, info="")
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (64,), generator=gen)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = F.mse_loss(recon, x)
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(rec.item())
        progress.update(task, advance=1, info=f"mse {np.mean(losses[-50:]):.4f} kl {kl.item():.2f}")
    vae.eval()
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.mean).sample
        stats = {
            "final_recon_mse": float(F.mse_loss(recon, images)),
            "latent_std": float(posterior.mean.std()),
        }
    vae.register_to_config(scaling_factor=round(1.0 / stats["latent_std"], 5))
    return vae, stats


def train_denoiser(vae, tokenizer, images, labels, steps: int, seed: int, progress) -> tuple[object, object, dict]:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=64,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_scheduler = DDPMScheduler(**SCHEDULER_BETAS)

    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    lat_mean, lat_std = posterior.mean, posterior.std
    scale = vae.config.scaling_factor

    # Every (digit, phrasing) prompt is tokenized once; index 0 of each row set is the empty prompt.
    prompt_table = [[p for p in all_prompts(d)] for d in range(10)]
    flat = [""] + [p for row in prompt_table for p in row]
    ids = tokenizer(flat, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    n_phrasings = len(PROMPT_TEMPLATES)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=steps, pct_start=0.04)
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=0.75)
    gen = torch.Generator().manual_seed(seed + 1)
    task = progress.add_task("UNet + text encoder", total=steps, info="")
    losses = []
    batch = 64
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        latents = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        phrasing = torch.randint(0, n_phrasings, (batch,), generator=gen)
        prompt_idx = 1 + labels[idx] * n_phrasings + phrasing
        drop = torch.rand(batch, generator=gen) < 0.1  # classifier-free guidance needs the empty prompt
        prompt_idx = torch.where(drop, torch.zeros_like(prompt_idx), prompt_idx)
        cond = text_encoder(ids[prompt_idx])[0]
        pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        losses.append(loss.item())
        progress.update(task, advance=1, info=f"loss {np.mean(losses[-100:]):.4f}")
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, {"final_loss": float(np.mean(losses[-200:]))}


def save_pipeline(out: Path, vae, unet, text_encoder, tokenizer_dir: Path, dtype: torch.dtype) -> None:
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    scheduler = DPMSolverMultistepScheduler.from_config(DDPMScheduler(**SCHEDULER_BETAS).config)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(dtype)
    # transformers loads a component at its stored dtype while diffusers loads at float32: the (tiny) text
    # encoder is stored in float32 so that a plain `from_pretrained(dir)` runs without a dtype argument.
    pipe.text_encoder.to(torch.float32)
    pipe.save_pretrained(out, safe_serialization=True)
    write_sampling_defaults(out)


def main(argv: list[str] | None = None) -> int:
    from transformers import CLIPTokenizer

    from edgekit.quality.digit_classifier import train_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--unet-steps", type=int, default=5000)
    parser.add_argument("--classifier-epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                        help="store weights as float16 (half the bytes; quality is measured on the stored weights)")
    args = parser.parse_args(argv)

    torch.use_deterministic_algorithms(True)
    out = args.out.resolve()
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    splits = load_splits()
    report: dict = {"seed": args.seed, "torch_threads": torch.get_num_threads(),
                    "split_sizes": {k: len(v.labels) for k, v in splits.items()}}
    started = time.time()
    with _progress() as progress:
        tokenizer_dir = staging / "tokenizer_src"
        write_clip_tokenizer(tokenizer_dir, vocabulary(), MAX_TOKENS)
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        train_images = _to_rgb(splits["diffusion"].images)
        t0 = time.time()
        vae, vae_stats = train_vae(train_images, args.vae_steps, args.seed, progress)
        report["vae"] = {**vae_stats, "steps": args.vae_steps, "seconds": round(time.time() - t0, 1)}
        t0 = time.time()
        labels = torch.from_numpy(splits["diffusion"].labels)
        unet, text_encoder, unet_stats = train_denoiser(vae, tokenizer, train_images, labels, args.unet_steps,
                                                        args.seed, progress)
        report["unet"] = {**unet_stats, "steps": args.unet_steps, "seconds": round(time.time() - t0, 1)}
        t0 = time.time()
        classifier, cls_stats = train_classifier(splits["classifier"], splits["eval"], args.classifier_epochs,
                                                 args.seed, progress)
        report["classifier"] = {**cls_stats, "seconds": round(time.time() - t0, 1)}
    save_pipeline(staging / "pipeline", vae, unet, text_encoder, tokenizer_dir,
                  torch.float16 if args.fp16 else torch.float32)
    classifier.save(staging / "classifier")
    shutil.rmtree(tokenizer_dir)
    report["total_seconds"] = round(time.time() - started, 1)
    report["params"] = {
        "unet": sum(p.numel() for p in unet.parameters()),
        "vae": sum(p.numel() for p in vae.parameters()),
        "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
    }
    report["weights_dtype"] = "float16 (text encoder float32)" if args.fp16 else "float32"
    (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    for name in ("pipeline", "classifier", "training.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (staging / name).rename(target)
    shutil.rmtree(staging)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
