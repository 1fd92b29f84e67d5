"""Builders of the shared sampling vectors the JS, Kotlin and Swift twins run (edgekit/twin_vectors/):

- noise.json: the counter-based generator (edgekit.noise): Philox4x32-10 known-answer words (Random123's
  published vectors) and the first words and normals of a few (seed, stream) pairs;
- scheduler.json: full small-table runs (deterministic and stochastic schedulers) under every guidance
  mode, with a fake model whose conditional and unconditional predictions differ;
- tokenizer_pad_cases.json: an SD-2-style tokenizer, padding with "!" (id 0), as transformers pads.

Expected values come from the reference implementations (edgekit.noise, edgekit.schedule, transformers).
Regenerate after a deliberate change with: .venv/bin/python tests/sampling_vectors.py --write
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

VECTORS = Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors"
# Random123's kat_vectors for philox4x32 with 10 rounds: counter, key -> words
PHILOX_KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
STREAMS = [(0, 0, 16), (1, 0, 16), (0, 1, 16), (4294967295, 4294967295, 9), (12345, 7, 11)]
LATENT = 6  # elements of the fake latent in the scheduler cases
MODEL = ("cond[i] = 0.3*x[i] + 0.001*t + 0.01*i; uncond[i] = 0.2*x[i] - 0.0005*t; eps = uncond + "
         "guidance_scale*(cond - uncond) for guidance_mode classifier-free, else eps = cond (uncond never called); "
         "x0 = normals(seed, 0, 6); step j's noise = normals(seed, j + 1, 6)")
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PAD_TEXTS = ["a handwritten digit seven", "", "zebra café", "the number seven, drawn in ink with a pen on paper again"]
PAD_MAX_LENGTH = 16


def fake_cond(x, t):
    return np.array([0.3 * v + 0.001 * t + 0.01 * i for i, v in enumerate(x)])


def fake_uncond(x, t):
    return np.array([0.2 * v - 0.0005 * t for v in x])


def build_noise_vectors() -> dict:
    from edgekit.noise import NAME, normals, philox4x32, words

    kat = []
    for counter, key, expected in PHILOX_KAT:
        got = [int(v) for v in philox4x32(np.array([counter], dtype=np.uint32), tuple(key))[0]]
        assert got == expected, (counter, key, got)  # the reference itself against the published vectors
        kat.append({"counter": counter, "key": key, "words": expected})
    streams = [{"seed": seed, "stream": stream, "words": [int(v) for v in words(seed, stream, count)],
                "normals": [float(v) for v in normals(seed, stream, count)]} for seed, stream, count in STREAMS]
    return {"format": "edgekit-noise-vectors/1", "generator": NAME, "philox4x32_10": kat, "streams": streams}


def _config(name: str, **extra) -> dict:
    import diffusers

    config = dict(getattr(diffusers, name).from_config({**SD_BETAS, **extra}).config)
    config["_class_name"] = name
    return config


def scheduler_cases() -> list[tuple[str, dict, int, dict, int]]:
    """(name, scheduler config, steps, sampling, seed)."""
    from edgekit.zoo.tiny_digits.recipe import SCHEDULER_BETAS

    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    dpm = dict(DPMSolverMultistepScheduler.from_config(DDPMScheduler(**SCHEDULER_BETAS).config).config)
    dpm["_class_name"] = "DPMSolverMultistepScheduler"
    return [
        ("dpm 4 steps, guidance 4", dpm, 4, {"guidance_scale": 4.0, "guidance_mode": "classifier-free"}, 3),
        ("dpm 8 steps, guidance 7.5", dpm, 8, {"guidance_scale": 7.5, "guidance_mode": "classifier-free"}, 4),
        ("dpm 4 steps, guidance 1 (off)", dpm, 4, {"guidance_scale": 1.0, "guidance_mode": "conditional"}, 5),
        ("euler trailing 1 step, guidance 0 (turbo)", _config("EulerDiscreteScheduler", timestep_spacing="trailing"),
         1, {"guidance_scale": 0.0, "guidance_mode": "conditional"}, 6),
        ("euler trailing 4 steps, guidance 0, mode derived", _config("EulerDiscreteScheduler", timestep_spacing="trailing"),
         4, {"guidance_scale": 0.0}, 7),
        ("dpm 4 steps, guidance 7.5, mode derived", dpm, 4, {"guidance_scale": 7.5}, 8),
        ("euler ancestral 4 steps, guidance 7.5", _config("EulerAncestralDiscreteScheduler"), 4,
         {"guidance_scale": 7.5, "guidance_mode": "classifier-free"}, 9),
        ("lcm 4 steps, guidance embedding", _config("LCMScheduler"), 4,
         {"guidance_scale": 8.0, "guidance_mode": "embedding"}, 10),
        ("lcm 2 steps, guidance 1", _config("LCMScheduler"), 2, {"guidance_scale": 1.0, "guidance_mode": "conditional"}, 11),
    ]


def run_case(table: dict, sampling: dict, seed: int) -> tuple[np.ndarray, str, dict]:
    """The reference device loop for one case: (latents, guidance mode, calls of cond / uncond)."""
    from edgekit.noise import normals
    from edgekit.schedule import GUIDANCE_CFG, guidance_mode, run_table

    mode = sampling.get("guidance_mode") or guidance_mode(sampling["guidance_scale"])
    calls = {"cond": 0, "uncond": 0}
    g = sampling["guidance_scale"]

    def model(x, t):
        calls["cond"] += 1
        if mode != GUIDANCE_CFG:
            return fake_cond(x, t)
        calls["uncond"] += 1
        c, u = fake_cond(x, t), fake_uncond(x, t)
        return u + g * (c - u)

    x0 = normals(seed, 0, LATENT)
    out = run_table(table, x0, model, lambda j: normals(seed, j + 1, LATENT))
    return out, mode, calls


def build_scheduler_vectors() -> dict:
    from edgekit.noise import normals
    from edgekit.schedule import schedule_table

    cases = []
    for name, config, steps, sampling, seed in scheduler_cases():
        table = schedule_table(config, steps)
        out, mode, calls = run_case(table, sampling, seed)
        cases.append({"name": name, "steps": steps, "table": table, "sampling": sampling, "seed": seed,
                      "x0": [float(v) for v in normals(seed, 0, LATENT)], "guidance_mode": mode,
                      "cond_calls": calls["cond"], "uncond_calls": calls["uncond"],
                      "expected": [float(v) for v in out]})
    return {"format": "edgekit-scheduler-vectors/2", "model": MODEL, "cases": cases}


def build_pad_vectors(tmp: Path) -> dict:
    """An SD-2-style tokenizer: the digits model's vocabulary with pad_token "!" (id 0), padded by transformers."""
    from transformers import CLIPTokenizer

    from edgekit.zoo.tiny_digits.recipe import MAX_TOKENS, vocabulary
    from edgekit.zoo.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(tmp / "slow", vocabulary(), MAX_TOKENS)
    tok = CLIPTokenizer.from_pretrained(tmp / "slow", pad_token="!")
    assert tok.pad_token_id == 0 and tok.pad_token_id != tok.eos_token_id
    cases = [{"text": t, "ids": tok(t, padding="max_length", max_length=PAD_MAX_LENGTH, truncation=True).input_ids}
             for t in PAD_TEXTS]
    return {"format": "edgekit-tokenizer-vectors/1", "tokenizer": "tokenizer.json", "max_length": PAD_MAX_LENGTH,
            "pad": "!", "pad_id": int(tok.pad_token_id), "cases": cases}


def write_all(tmp: Path) -> None:
    for name, data in (("noise.json", build_noise_vectors()), ("scheduler.json", build_scheduler_vectors()),
                       ("tokenizer_pad_cases.json", build_pad_vectors(tmp))):
        (VECTORS / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_all(Path(d))
    print(f"wrote {VECTORS}")
