"""Image metrics and their intervals: PSNR and SSIM of an image against its reference, the 95% interval of
a mean, the Wilson interval of a proportion, a percentile bootstrap. Plain numpy/scipy, no model."""
from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0  # identical images: a finite number, so rows stay strict JSON and comparable


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """||actual - reference|| / ||reference|| over the whole array."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(actual - reference) / max(np.linalg.norm(reference), 1e-12))


def psnr(actual: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(actual, np.float64) - np.asarray(reference, np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def psnr_per_image(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image (N, H, W[, C]) in [0, 1] against its reference, capped at PSNR_CAP_DB."""
    a = np.asarray(images, np.float64)
    b = np.asarray(references, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images {a.shape} and references {b.shape} differ in shape")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(1.0 / mse)
    return np.minimum(values, PSNR_CAP_DB)


def ssim_per_image(images: np.ndarray, references: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, data range 1) of
    each image against its reference, averaged over pixels and channels."""
    from scipy.ndimage import gaussian_filter

    a = np.asarray(images, np.float64)
    b = np.asarray(references, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images {a.shape} and references {b.shape} differ in shape")
    if a.ndim == 3:
        a, b = a[..., None], b[..., None]
    c1, c2 = 0.01**2, 0.03**2
    # Filter over the two spatial axes only, separately for every image and channel.
    window = (0, sigma, sigma, 0)

    def blur(x):
        return gaussian_filter(x, sigma=window, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.reshape(len(a), -1).mean(axis=1)


def mean_ci95(values) -> tuple[float, tuple[float, float]]:
    """Mean and the Student-t 95% interval of the mean (needs at least two values)."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    if len(x) < 2:
        raise ValueError("an interval of a mean needs at least two values")
    mean = float(x.mean())
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, (mean - half, mean + half)


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound at 0 and 1, unlike the normal approximation)."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci95(samples: np.ndarray, statistic, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """Normal bootstrap interval: the statistic on all rows +- 1.96 standard deviations of its value over
    ``draws`` resamples (rows with replacement). Not the percentile interval: a statistic biased by repeated
    rows, as a Frechet distance is (duplicates shrink the covariance rank), shifts its percentiles away
    from the estimate itself, while the spread of the resamples stays a fair measure of its noise."""
    rng = np.random.default_rng(seed)
    n = len(samples)
    centre = float(statistic(samples))
    spread = float(np.std([statistic(samples[rng.integers(0, n, n)]) for _ in range(draws)], ddof=1))
    return centre - 1.959963984540054 * spread, centre + 1.959963984540054 * spread


def summary(values, digits: int = 4, low: float | None = None, high: float | None = None) -> dict:
    """{"value", "ci95", "n"} of a mean, rounded for a table row; the interval is cut to the metric's range
    [low, high] (a t interval around an SSIM of 0.999 would otherwise reach past 1)."""
    mean, (lo, hi) = mean_ci95(values)
    lo = lo if low is None else max(lo, low)
    hi = hi if high is None else min(hi, high)
    return {"value": round(mean, digits), "ci95": [round(lo, digits), round(hi, digits)], "n": len(values)}
