"""The embedded default model: a tiny Stable-Diffusion-style pipeline trained on handwritten digits."""
from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
PIPELINE_DIR = ZOO_DIR / "pipeline"
CLASSIFIER_DIR = ZOO_DIR / "classifier"
