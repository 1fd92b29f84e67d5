"""The training script (scripts/train_tiny_digits.py) runs end to end (a few steps) and writes a pipeline plain
diffusers loads."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_tiny_digits.py"


def test_training_script_smoke(tmp_path):
    from diffusers import StableDiffusionPipeline

    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--vae-steps", "2", "--unet-steps",
                           "2", "--classifier-epochs", "1"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["params"]["unet"] > 1_000_000
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.vae.config.scaling_factor > 0
    assert json.loads((tmp_path / "pipeline" / "edgekit_defaults.json").read_text())["num_inference_steps"] == 20
    assert (tmp_path / "classifier" / "model.safetensors").is_file()
    assert not (tmp_path / ".staging").exists()


@pytest.mark.slow
def test_few_step_training_script_smoke(tmp_path):
    """scripts/train_tiny_digits_fewstep.py distills a student from the shipped model and writes a pipeline that
    offers 1, 2 and 4 steps, with its evaluation (about 40 s here at these sizes)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out = tmp_path / "student"
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name("train_tiny_digits_fewstep.py")), "--out", str(out),
                           "--pairs", "4", "--train-steps", "2", "--batch-size", "2", "--samples-per-digit", "1"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    defaults = json.loads((out / "edgekit_defaults.json").read_text())
    assert defaults["offered_steps"] == [1, 2, 4] and defaults["guidance_scale"] == 1.0
    report = json.loads((out / "fewstep.json").read_text())
    assert set(report["evaluation"]) == {"teacher-20", "student-1", "student-2", "student-4"}
    assert isinstance(StableDiffusionPipeline.from_pretrained(out).scheduler, DDIMScheduler)
    assert not (tmp_path / ".student.staging").exists()
