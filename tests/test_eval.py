"""The shipped default model meets its quality target, measured end to end through the CLI."""
import json


def test_default_model_prompt_accuracy(run_cli):
    code, stdout, err = run_cli("eval", "--steps", "20", "--samples-per-digit", "10", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["n_images"] == 100
    assert report["prompt_accuracy"] >= 0.95, report
    assert report["frechet_floor"] > 0
    assert report["frechet_distance"] < 10 * report["frechet_floor"], report
