"""Reference fidelity for any model (edgekit.quality): metrics and intervals, the shared initial noise, the
cached reference, the evaluators a model declares, CLIP score with a local CLIP, interleaved bench timing,
and the digit classifier confined to the digits evaluator."""
import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.quality.metrics import (PSNR_CAP_DB, bootstrap_ci95, mean_ci95, psnr_per_image, ssim_per_image,
                                     wilson_ci95)

PACKAGE = Path(__file__).resolve().parent.parent / "edgekit"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(root))
    return root


def test_psnr_and_ssim_rank_damage_and_cap_identical_images():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 32, 32, 3))
    mild = np.clip(ref + rng.normal(0, 0.02, ref.shape), 0, 1)
    heavy = np.clip(ref + rng.normal(0, 0.2, ref.shape), 0, 1)
    assert psnr_per_image(ref, ref).tolist() == [PSNR_CAP_DB] * 3
    assert np.allclose(ssim_per_image(ref, ref), 1.0)
    assert (psnr_per_image(mild, ref) > psnr_per_image(heavy, ref) + 10).all()
    assert (ssim_per_image(mild, ref) > ssim_per_image(heavy, ref)).all()
    assert psnr_per_image(ref * 0 + 0.5, ref * 0 + 0.6)[0] == pytest.approx(20.0)


def test_intervals():
    rng = np.random.default_rng(1)
    small, large = rng.normal(5, 1, 10), rng.normal(5, 1, 1000)
    m, (lo, hi) = mean_ci95(small)
    _, (lo2, hi2) = mean_ci95(large)
    assert lo < m < hi and hi2 - lo2 < (hi - lo) / 5 and lo2 < 5 < hi2
    with pytest.raises(ValueError):
        mean_ci95([1.0])
    assert wilson_ci95(10, 10)[1] == pytest.approx(1.0) and 0.6 < wilson_ci95(10, 10)[0] < 0.8  # 10/10 is not "certainly 1"
    assert wilson_ci95(0, 10)[0] == 0.0
    lo, hi = bootstrap_ci95(large, np.mean)
    assert lo < large.mean() < hi and hi - lo < 0.3


def test_torch_candidates_and_bundles_start_from_the_same_noise():
    """The bundle sampler draws its initial latents exactly as the fidelity evaluator feeds torch pipelines."""
    from edgekit.quality.fidelity import initial_noise
    from edgekit.runtime.sampler import Components, sample

    shape = (4, 8, 8)
    captured = {}

    def vae(latents):
        captured["x0"] = latents
        return latents

    comps = Components(text_encoder=lambda ids: np.zeros((len(ids), 3, 2), np.float32),
                       unet=lambda x, t, h: np.zeros_like(x), vae_decoder=vae)
    table = {"timesteps": [], "init_noise_sigma": 1.0, "input_scale": [], "sample_coeff": [], "eps_coeffs": []}
    sample(comps, lambda prompts: np.zeros((len(prompts), 3), np.int32), table, ["a", "b"], [3, 11], 1.0, shape, 1.0)
    np.testing.assert_array_equal(captured["x0"], initial_noise([3, 11], shape))


def test_reference_is_cached_and_a_candidate_is_scored_against_it(sd15_reduced, cache, monkeypatch):
    from edgekit.pipeline import load_pipeline
    from edgekit.quality import evaluator as ev

    quality = ev.ModelQuality(sd15_reduced, samples=3, seed=0)
    assert quality.extras == () and quality.digits is None and quality.grid.labels is None
    assert len(set(quality.grid.seeds)) == 3
    reference = quality.reference()
    assert reference.shape == (3, 64, 64, 3) and len(list((cache / "references").glob("*.npy"))) == 1

    same = quality.score_pipe(load_pipeline(sd15_reduced))  # the reference model itself at its default steps
    assert same.row["quality"]["value"] == PSNR_CAP_DB and same.row["ssim"]["value"] == pytest.approx(1.0)
    fewer = quality.score_pipe(load_pipeline(sd15_reduced), steps=3).row
    assert fewer["quality"]["evaluator"] == "reference-fidelity" and fewer["quality"]["metric"] == "psnr_db"
    assert fewer["quality"]["n"] == 3 and fewer["quality"]["value"] < PSNR_CAP_DB
    assert fewer["quality"]["ci95"][0] <= fewer["quality"]["value"] <= fewer["quality"]["ci95"][1]
    assert "prompt_accuracy" not in fewer and json.loads(json.dumps(fewer, allow_nan=False)) == fewer

    def no_model(*a, **k):
        raise AssertionError("the reference must come from the cache")

    monkeypatch.setattr("edgekit.pipeline.load_pipeline", no_model)
    np.testing.assert_array_equal(ev.ModelQuality(sd15_reduced, samples=3, seed=0).reference(), reference)


def test_the_digits_model_declares_its_evaluator_and_prompts_and_copies_carry_them(sd15_reduced, tmp_path):
    from edgekit.calibration import GENERAL_PROMPTS_FILE, default_prompts_file, read_prompts
    from edgekit.errors import ModelFormatError
    from edgekit.quality.evaluator import declared_evaluators
    from edgekit.zoo.tiny_digits import PIPELINE_DIR, SLIM_DIR

    for model in (PIPELINE_DIR, SLIM_DIR):
        assert declared_evaluators(model) == ("digits",)
        assert default_prompts_file(model) == model / "calibration_prompts.txt"
        assert all(any(w in p for w in ("digit", "handwritten", "number")) for p in read_prompts(default_prompts_file(model)))
    assert declared_evaluators(sd15_reduced) == () and default_prompts_file(sd15_reduced) == GENERAL_PROMPTS_FILE

    copy = tmp_path / "renamed_somewhere_else"
    shutil.copytree(SLIM_DIR, copy)  # what prune, slim and quantize outputs do: the declaration is data, not a path
    assert declared_evaluators(copy) == ("digits",)
    (copy / "edgekit_defaults.json").write_text(json.dumps({"quality_evaluators": ["mnist"]}))
    with pytest.raises(ModelFormatError, match="quality_evaluators"):
        declared_evaluators(copy)


def test_general_prompt_set():
    from edgekit.calibration import GENERAL_PROMPTS_FILE, read_prompts
    from edgekit.quality.evaluator import EVAL_PROMPTS_FILE

    prompts = read_prompts(GENERAL_PROMPTS_FILE)
    assert len(prompts) >= 200 and len(set(prompts)) >= 195
    assert prompts.count("") >= 2, "the empty prompt guidance runs is calibrated too"
    words = [len(p.split()) for p in prompts]
    assert min(words) == 0 and sum(1 for w in words if w <= 2) >= 10 and max(words) >= 40
    assert max(words) <= 60, "CLIP reads 77 tokens; the longest prompts come close, none is cut in half"
    assert not set(prompts) & set(read_prompts(EVAL_PROMPTS_FILE)), "quality is not measured on calibration prompts"
    assert not any("digit" in p for p in prompts)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_only_the_digits_evaluator_imports_the_digit_classifier():
    classifier = ("edgekit.quality.digit_classifier", "edgekit.zoo.tiny_digits.CLASSIFIER_DIR")
    allowed = {"quality/digits.py", "quality/digit_classifier.py"}  # (scripts/train_tiny_digits.py trains it)
    importers = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                 if any(name.startswith(classifier) for name in _imports(p))}
    assert importers <= allowed, importers - allowed
    assert "quality/digits.py" in importers
    # and the digits evaluator itself is reached only through the evaluator interface
    digits_users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                    if any(n.startswith("edgekit.quality.digits") for n in _imports(p))}
    # (scripts/train_tiny_digits_fewstep.py, outside the package, scores checkpoints before any bundle exists)
    assert digits_users <= {"quality/evaluator.py", "quality/digits.py"}, digits_users


def _tiny_clip(out: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from edgekit.zoo.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(out, "a photo of cat dog red blue house".split(), 77)
    vocab = len(json.loads((out / "vocab.json").read_text()))
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return _tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def test_clip_score_with_a_local_clip(tiny_clip):
    from edgekit.quality.clip import ClipScorer

    scorer = ClipScorer(tiny_clip)
    rng = np.random.default_rng(0)
    images = rng.random((4, 40, 40, 3)).astype(np.float32)
    per_image = scorer.per_image(images, ["a red cat", "a blue dog", "house", ""])
    assert per_image.shape == (4,) and np.all(np.abs(per_image) <= 1.0) and len(set(per_image.round(6))) == 4
    score = scorer.score(images, ["a red cat", "a blue dog", "house", ""])
    assert score["n"] == 4 and score["ci95"][0] <= score["value"] <= score["ci95"][1]


def test_eval_of_a_model_that_is_not_the_digits_model(run_cli, sd15_reduced, tiny_clip, cache):
    code, out, err = run_cli("eval", "--model", sd15_reduced, "--steps", "3", "--samples", "3", "--clip", tiny_clip,
                             "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["quality"]["evaluator"] == "reference-fidelity" and report["quality"]["n"] == 3
    assert report["quality"]["reference"] == "float torch, width 1.00, 50 steps"  # diffusers' default steps
    assert report["clip_score"]["n"] == 3 and -1 <= report["clip_score"]["value"] <= 1
    assert "prompt_accuracy" not in report and "frechet_distance" not in report
    assert [e["name"] for e in report["evaluators"]] == ["reference-fidelity", "clip"]


@pytest.mark.parametrize("case", ["missing", "not_clip", "no_config"])
def test_bad_clip_dir_is_one_clear_line_and_nothing_written(run_cli, sd15_reduced, tmp_path, cache, case):
    clip = {"missing": tmp_path / "nope", "not_clip": sd15_reduced / "text_encoder", "no_config": tmp_path}[case]
    code, out, err = run_cli("eval", "--model", sd15_reduced, "--steps", "2", "--samples", "2", "--clip", clip)
    assert code == 2, err
    assert f"--clip {clip}" in err and len(err.strip().splitlines()) == 1
    assert {"missing": "no such directory", "not_clip": "expected 'clip'", "no_config": "config.json missing"}[case] in err
    assert not cache.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"# only\n# comments\n\n", "only comments"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"\xff\xfe\xfa not utf8", "not UTF-8"),
])
def test_bad_prompts_file_is_one_clear_line_and_nothing_written(run_cli, tmp_path, content, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content)
    out = tmp_path / "calib"
    code, _, err = run_cli("calibrate", "--prompts", prompts, "--samples", "2", "--steps", "2", "--out", out)
    assert code == 2 and message in err and f"--prompts {prompts}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_cli("package", "--prompts", prompts, "--targets", "ort-web", "--out", tmp_path / "pkg")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pkg").exists()


def test_quoted_prompt_lines(tmp_path):
    from edgekit.calibration import read_prompts

    path = tmp_path / "p.txt"
    path.write_text('# comment\n""\n"# not a comment"\nplain text\n')
    assert read_prompts(path) == ["", "# not a comment", "plain text"]


def test_rows_are_timed_in_interleaved_rounds_after_a_warm_up():
    from edgekit.runtime.bench import time_rounds

    calls = []
    times = time_rounds(lambda key, r: calls.append((key, r)), ["a", "b", "c"], rounds=3)
    assert calls[:3] == [("a", 0), ("b", 0), ("c", 0)]  # warm-up, not timed
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(3)]
    assert [[k for k, _ in rd] for rd in rounds] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert all(len(set(r for _, r in rd)) == 1 for rd in rounds)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_latency_is_monotone_in_steps_unless_the_spreads_say_otherwise():
    from edgekit.runtime.bench import latency_summary, monotone_in_steps

    def row(w, s, times):
        return {"width": w, "steps": s, **latency_summary(times)}

    rows = monotone_in_steps([row(0.5, 4, [10, 11, 12, 13]), row(0.5, 8, [9.5, 10.5, 11, 12.5]),
                              row(0.5, 12, [3, 3.1, 3.2, 3.3]), row(1.0, 4, [20, 21, 22])])
    by = {(r["width"], r["steps"]): r for r in rows}
    assert by[(0.5, 4)]["latency_ms"] == 11.5 and "latency_note" not in by[(0.5, 4)]
    assert by[(0.5, 8)]["latency_ms"] == 11.5 and "raised" in by[(0.5, 8)]["latency_note"]  # noise: raised
    assert by[(0.5, 12)]["latency_ms"] == 3.15 and "kept as measured" in by[(0.5, 12)]["latency_note"]
    assert "latency_note" not in by[(1.0, 4)]


def test_merge_drops_rows_ranked_on_another_scale():
    from edgekit.runtime.bench import _merge

    q = {"evaluator": "reference-fidelity", "metric": "psnr_db", "reference": "float torch, width 1.00, 20 steps"}
    old = [{"width": 1.0, "steps": 4, "device": "d", "prompt_accuracy": 1.0},
           {"width": 1.0, "steps": 8, "device": "d", "quality": {**q, "value": 30.0}},
           {"width": 0.5, "steps": 8, "device": "d", "quality": {**q, "reference": "other", "value": 30.0}}]
    new = [{"width": 1.0, "steps": 20, "device": "d", "quality": {**q, "value": 40.0}}]
    rows, dropped = _merge(old, new)
    assert [(r["width"], r["steps"]) for r in rows] == [(1.0, 8), (1.0, 20)] and dropped == 2


def test_intervals_stay_inside_the_metric_range():
    from edgekit.quality.metrics import summary

    s = summary([0.999, 1.0, 0.998, 1.0], high=1.0)
    assert s["ci95"][1] == 1.0 and s["ci95"][0] < s["value"] <= 1.0
