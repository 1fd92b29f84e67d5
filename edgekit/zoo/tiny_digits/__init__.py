"""The embedded default model: a tiny Stable-Diffusion-style pipeline trained on handwritten digits."""
from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
PIPELINE_DIR = ZOO_DIR / "pipeline"
CLASSIFIER_DIR = ZOO_DIR / "classifier"
# The same model made slimmable (widths 0.5, 0.75, 1.0; one weight set) by `edgekit slim`; shipped because
# its training takes longer than a packaging run should (the command that made it is in its structure.json).
SLIM_DIR = ZOO_DIR / "slim"
# A few-step student (1, 2 or 4 DDIM steps, no classifier-free guidance) distilled from pipeline/ by
# scripts/train_tiny_digits_fewstep.py; its fewstep.json holds the training record and evaluation.
FEWSTEP_DIR = ZOO_DIR / "fewstep"
