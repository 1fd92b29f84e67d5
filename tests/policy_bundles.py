"""Bundles shared by the policy/bench/web-demo tests: the default model exported for ort-web once per
session, and a copy benched on this host (steps 4 and 20, width 1.0). Built lazily and cached. Also
``made_up_row``: a table row in the manifest's format (notes/schema.md) whose numbers are TEST DATA."""
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_CACHE: dict[str, Path] = {}
BENCH_STEPS = "4,20"
BENCH_SAMPLES = 10


def made_up_row(width: float, steps: int, latency_ms: float, quality: float, half: float, device: str = "test data",
             metric: str = "psnr_db") -> dict:
    """A full table row with made-up numbers, as `edgekit bench --import-table` takes rows from elsewhere."""
    return {"width": width, "steps": steps, "latency_ms": latency_ms,
            "latency_spread_ms": [round(latency_ms * 0.95, 2), round(latency_ms * 1.05, 2)], "latency_rounds": 7,
            "device": device, "runtime": "test data", "measured_at": "2026-12-02T17:00:00Z",
            "quality": {"evaluator": "reference-fidelity", "metric": metric, "value": quality,
                        "ci95": [quality - half, quality + half], "n": 20, "reference": "test data"},
            "ssim": {"value": 0.9, "ci95": [0.88, 0.92], "n": 20}}


def _cli(*argv) -> None:
    from edgekit.cli import main

    code = main([str(a) for a in argv])
    assert code == 0, f"edgekit {' '.join(map(str, argv))} exited {code}"


def exported(tmp_path_factory, default_model) -> Path:
    if "exported" not in _CACHE:
        root = tmp_path_factory.mktemp("policy_bundles")
        # The stock profile, minus its Node replay: the browser test below runs the bundle in real Chromium.
        profile = root / "web-ort-no-node.yaml"
        text = (REPO / "targets" / "web-ort.yaml").read_text()
        assert "verify_in_node: true" in text
        profile.write_text(text.replace("verify_in_node: true", "verify_in_node: false"))
        out = root / "ort-web"
        _cli("export", "--model", default_model, "--target", "ort-web", "--profile", profile, "--out", out)
        _CACHE["exported"] = out
    return _CACHE["exported"]


def benched(tmp_path_factory, default_model) -> Path:
    if "benched" not in _CACHE:
        src = exported(tmp_path_factory, default_model)
        out = src.parent / "ort-web-benched"
        shutil.copytree(src, out)
        _cli("bench", out, "--steps", BENCH_STEPS, "--samples", BENCH_SAMPLES, "--repeats", "1", "--threads", "1",
             "--reference-model", default_model)
        _CACHE["benched"] = out
    return _CACHE["benched"]
