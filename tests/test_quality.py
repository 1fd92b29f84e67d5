import numpy as np
import pytest

from edgekit.quality import psnr, relative_error
from edgekit.quality.digit_classifier import DigitScorer, digit_prompts, frechet_distance, score_generations
from edgekit.zoo.tiny_digits.data import load_splits


@pytest.fixture(scope="module")
def splits():
    return load_splits()


def test_splits_are_disjoint_and_stable(splits):
    sizes = {k: len(v.labels) for k, v in splits.items()}
    assert sizes == {"diffusion": 898, "classifier": 539, "eval": 360}
    again = load_splits()
    np.testing.assert_array_equal(again["eval"].labels, splits["eval"].labels)


def test_shipped_classifier_accuracy_on_held_out_real_digits(splits):
    scorer = DigitScorer.load()
    accuracy = (scorer.predict(splits["eval"].images) == splits["eval"].labels).mean()
    assert accuracy >= 0.97


def test_real_digits_score_as_perfect_generations(splits):
    """Real held-out-of-training digits, asked as their own labels, sit at the floor."""
    images = np.repeat(splits["classifier"].images[:100, :, :, None], 3, axis=-1)
    report = score_generations(images, splits["classifier"].labels[:100])
    assert report.prompt_accuracy >= 0.95
    assert report.frechet_distance < 3 * report.frechet_floor + 1.0


def test_noise_scores_badly(splits):
    rng = np.random.default_rng(0)
    noise = rng.random((100, 32, 32, 3)).astype(np.float32)
    report = score_generations(noise, np.arange(100) % 10)
    assert report.prompt_accuracy < 0.5
    assert report.frechet_distance > 5 * report.frechet_floor


def test_frechet_distance_properties():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, b + 2.0)
    assert shifted == pytest.approx(8 * 4.0, rel=0.15)
    assert frechet_distance(a, b) < 0.5


def test_relative_error_and_psnr():
    ref = np.ones((4, 4))
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref * 1.1, ref) == pytest.approx(0.1)
    assert psnr(ref, ref) == float("inf")
    assert psnr(ref * 0.9, ref) == pytest.approx(20.0)


def test_evaluation_grid():
    prompts, seeds, asked = digit_prompts(3, seed=5)
    assert len(prompts) == 30 and seeds[:3] == [5, 6, 7]
    assert prompts[0] == "a handwritten digit zero" and asked[-1] == 9


def test_digits_grid_balances_any_sample_count():
    from edgekit.quality.digits import grid

    prompts, seeds, labels = grid(23, seed=5)
    assert len(prompts) == 23 and labels[:11] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert prompts[3] == "a handwritten digit three"
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1


def test_digits_grid_draws_independent_noise_for_every_image():
    """The Wilson interval counts images as independent trials: no two images may share a seed (the grid once
    gave ten digits one seed, so twenty images were two noise draws and the interval was far too narrow)."""
    from edgekit.quality.digits import grid

    for samples, seed in ((20, 0), (23, 5), (400, 10000)):
        _, seeds, _ = grid(samples, seed)
        assert seeds == list(range(seed, seed + samples))


def test_digits_evaluator_gives_intervals(splits):
    from edgekit.quality.digits import ROW_KEYS, DigitsEvaluator

    images = np.repeat(splits["classifier"].images[:40, :, :, None], 3, axis=-1)
    labels = splits["classifier"].labels[:40]
    wrong = (labels + 1) % 10
    evaluator = DigitsEvaluator()
    right, flipped = evaluator.score(images, labels), evaluator.score(images, wrong)
    assert set(ROW_KEYS) <= set(right)
    lo, hi = right["prompt_accuracy_ci95"]
    assert lo <= right["prompt_accuracy"] <= hi and right["prompt_accuracy"] >= 0.9 and hi - lo > 0.02
    assert flipped["prompt_accuracy"] < 0.2 and flipped["prompt_accuracy_ci95"][1] < lo
    flo, fhi = right["frechet_distance_ci95"]
    assert flo < right["frechet_distance"] < fhi
    assert right["frechet_distance"] == flipped["frechet_distance"]  # the features do not depend on the asked label
