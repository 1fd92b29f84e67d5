"""The training script (scripts/train_tiny_digits.py) runs end to end (a few steps) and writes a pipeline plain
diffusers loads."""
import json
import subprocess
import sys
from pathlib import Path

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
