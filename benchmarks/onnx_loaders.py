"""Other tools load an onnx bundle (edgekit export --target onnx): diffusers' OnnxStableDiffusionPipeline (in
this venv) and optimum's ORTStableDiffusionPipeline (optimum-onnx 0.1.0 pins optimum 2.1 and transformers
< 4.58, so it lives in its own venv), each fed edgekit's initial noise, against edgekit's own BundleSampler.

    .venv/bin/python benchmarks/onnx_loaders.py [--model DIR] [--optimum-venv DIR]

Without --optimum-venv a fresh venv is made under the output's temp folder and the install is timed
(torch 2.13.0 CPU first, then optimum-onnx[onnxruntime]==0.1.0 and diffusers<0.36, which still accepts
huggingface_hub < 1 as transformers 4.57 needs). -> benchmarks/results/onnx_loaders.{json,md}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROMPT, SEED, STEPS, GUIDANCE = "a handwritten digit seven", 3, 8, 4.0

OPTIMUM_SCRIPT = r"""
import json, sys, time, numpy as np, torch
from importlib.metadata import version
from optimum.onnxruntime import ORTStableDiffusionPipeline
view, noise, out, prompt, steps, guidance = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
t0 = time.perf_counter()
pipe = ORTStableDiffusionPipeline.from_pretrained(view)
pipe.set_progress_bar_config(disable=True)
latents = torch.from_numpy(np.load(noise))
side = latents.shape[-1] * pipe.vae_scale_factor
img = pipe(prompt, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
           output_type="np").images
np.save(out, img)
print(json.dumps({"seconds": time.perf_counter() - t0, **{p: version(p) for p in
                  ("optimum", "optimum-onnx", "transformers", "diffusers", "onnxruntime")}}))
"""


def make_optimum_venv(folder: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "pip"), "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["optimum-onnx[onnxruntime]==0.1.0", "diffusers<0.36", "numpy<2.3"], check=True)
    return folder / "bin" / "python", time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--optimum-venv", type=Path, default=None)
    args = parser.parse_args()

    from diffusers import OnnxStableDiffusionPipeline

    from edgekit.cli import main as edgekit
    from edgekit.noise import initial_latents
    from edgekit.runtime.sampler import BundleSampler

    result = {"prompt": PROMPT, "seed": SEED, "steps": STEPS, "guidance": GUIDANCE}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = tmp / "onnx"
        argv = ["export", "--target", "onnx", "--out", str(bundle)] + (["--model", str(args.model)] if args.model else [])
        assert edgekit(argv) == 0
        manifest = json.loads((bundle / "manifest.json").read_text())
        view = bundle / manifest["components"]["unet"]["widths"]["1.00"]["pipeline_dir"]
        sampler = BundleSampler(bundle)
        t0 = time.perf_counter()
        ours, _ = sampler.generate([PROMPT], [SEED], STEPS, 1.0, guidance=GUIDANCE)
        result["edgekit_s"] = round(time.perf_counter() - t0, 3)
        noise = np.asarray(initial_latents([SEED], sampler.latent_shape), dtype=np.float32)
        np.save(tmp / "noise.npy", noise)

        t0 = time.perf_counter()
        pipe = OnnxStableDiffusionPipeline.from_pretrained(view, provider="CPUExecutionProvider")
        pipe.set_progress_bar_config(disable=True)
        side = sampler.latent_shape[-1] * 8
        theirs = pipe(PROMPT, height=side, width=side, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                      latents=noise, output_type="np").images
        result["diffusers_onnx"] = {"max_abs_diff": float(np.abs(theirs - ours).max()),
                                    "seconds": round(time.perf_counter() - t0, 3)}

        python = args.optimum_venv / "bin" / "python" if args.optimum_venv else None
        if python is None:
            python, install_s = make_optimum_venv(tmp / "optimum-venv")
            result["optimum_install_s"] = round(install_s, 1)
        proc = subprocess.run([str(python), "-c", OPTIMUM_SCRIPT, str(view), str(tmp / "noise.npy"),
                               str(tmp / "optimum.npy"), PROMPT, str(STEPS), str(GUIDANCE)],
                              capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            result["optimum_ort"] = {"error": proc.stderr.strip().splitlines()[-1]}
        else:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            optimum_img = np.load(tmp / "optimum.npy")
            result["optimum_ort"] = {"max_abs_diff": float(np.abs(optimum_img - ours).max()),
                                     "seconds": round(info.pop("seconds"), 3), **info}

    out = HERE / "results"
    (out / "onnx_loaders.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {name} | {r.get('max_abs_diff', r.get('error'))} | {r.get('seconds', '')} |"
            for name, r in (("diffusers OnnxStableDiffusionPipeline", result["diffusers_onnx"]),
                            ("optimum ORTStableDiffusionPipeline", result["optimum_ort"]))]
    (out / "onnx_loaders.md").write_text(
        "# Other tools load the onnx bundle (tiny digits model, one view per width)\n\n"
        f"Prompt '{PROMPT}', seed {SEED}, {STEPS} steps, guidance {GUIDANCE}; edgekit's own sampler "
        f"{result['edgekit_s']} s. Image difference vs edgekit's BundleSampler (pixels in [0, 1]):\n\n"
        "| loader | max abs diff | seconds (load + run) |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + (f"optimum-onnx venv install (torch CPU wheel from the pip cache, then optimum-onnx): "
           f"{result['optimum_install_s']} s.\n" if "optimum_install_s" in result else ""))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
