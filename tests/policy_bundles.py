"""Bundles shared by the policy/bench/web-demo tests: the default model exported for ort-web once per
session, and a copy benched on this host (steps 4 and 20, width 1.0). Built lazily and cached."""
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_CACHE: dict[str, Path] = {}
BENCH_STEPS = "4,20"


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
        _cli("bench", out, "--steps", BENCH_STEPS, "--samples-per-digit", "2", "--repeats", "1", "--threads", "1")
        _CACHE["benched"] = out
    return _CACHE["benched"]
