"""`edgekit eval`: the default (digits) model meets its quality target, with every evaluator it declares;
the evaluator interface scores a narrower width against the full-width reference."""
import json


def test_default_model_quality(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    code, stdout, err = run_cli("eval", "--steps", "20", "--samples", "50", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["n_images"] == 50
    assert [e["name"] for e in report["evaluators"]] == ["reference-fidelity", "digits"]
    # the candidate is the reference model itself at its default steps: identical images
    assert report["quality"]["value"] == 100.0 and report["quality"]["n"] == 50
    assert report["prompt_accuracy"] >= 0.95, report
    lo, hi = report["prompt_accuracy_ci95"]
    assert lo <= report["prompt_accuracy"] <= hi and lo > 0.85
    assert report["frechet_floor"] > 0
    assert report["frechet_distance"] < 10 * report["frechet_floor"], report
    assert report["frechet_distance_ci95"][0] < report["frechet_distance"] < report["frechet_distance_ci95"][1]


def test_a_narrower_width_is_scored_against_the_full_width_reference(run_cli, tmp_path, monkeypatch):
    from edgekit.zoo.tiny_digits import SLIM_DIR

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    code, stdout, err = run_cli("eval", "--model", SLIM_DIR, "--width", "0.5", "--steps", "8", "--samples", "10",
                                "--json")
    assert code == 0, err
    report = json.loads(stdout)
    q = report["quality"]
    assert q["reference"] == "float torch, width 1.00, 20 steps" and q["n"] == 10
    assert 10.0 < q["ci95"][0] <= q["value"] <= q["ci95"][1] < 60.0
    assert 0.0 < report["ssim"]["value"] < 1.0
    assert 0.0 <= report["prompt_accuracy"] <= 1.0
