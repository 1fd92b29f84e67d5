"""Quality of generations, for any model: one interface (``ModelQuality`` in edgekit.quality.evaluator)
chosen per model, used by eval, package, bench and the report.

    metrics.py           PSNR, SSIM, relative error; intervals (t, Wilson, bootstrap)
    fidelity.py          reference fidelity: same prompts, seeds and noise as the float full-width model
    clip.py              CLIP score with a local CLIP model (--clip DIR)
    digits.py            extra columns for the embedded digits model (the only user of the classifier)
    digit_classifier.py  the digits model's classifier: network, training, accuracy, Frechet distance
    evaluator.py         ModelQuality: the evaluators a model gets, its grid, its cached reference
"""
from edgekit.quality.metrics import psnr, relative_error

__all__ = ["psnr", "relative_error"]
