"""The shared twin vectors beyond the policy: the tokenizer twin's cases and the scheduler loop's cases.

Expected values come from the reference implementations (transformers' CLIPTokenizer as the pipeline
uses it; edgekit.schedule's tables and run_table). The JS, Kotlin and Swift twins read the same files.
Regenerate after a deliberate change with: .venv/bin/python tests/test_policy_twins.py --write
"""
import json
import sys
from pathlib import Path

import numpy as np

from edgekit.schedule import TABLE_CHECK_TOL

VECTORS = Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors"
TEXTS = ["a handwritten digit seven", "  A   Handwritten DIGIT 7!! ", "zebra café", "an ink sketch of the digit two",
         "the number seven, drawn in ink with a pen on paper again and again", "", "it's 3's sketch"]
MAX_LENGTH = 16


def build_tokenizer_vectors(tmp: Path) -> tuple[str, dict]:
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    from edgekit.zoo.tiny_digits.recipe import MAX_TOKENS, vocabulary
    from edgekit.zoo.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(tmp / "slow", vocabulary(), MAX_TOKENS)
    CLIPTokenizerFast.from_pretrained(tmp / "slow").save_pretrained(tmp / "fast")
    tokenizer_json = (tmp / "fast" / "tokenizer.json").read_text(encoding="utf-8")
    slow = CLIPTokenizer.from_pretrained(tmp / "slow")
    cases = [{"text": t, "ids": slow(t, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids}
             for t in TEXTS]
    return tokenizer_json, {"format": "edgekit-tokenizer-vectors/1", "tokenizer": "tokenizer.json",
                            "max_length": MAX_LENGTH, "pad": "eos", "cases": cases}


def build_scheduler_vectors() -> dict:
    """The scheduler loop's vectors (guidance modes, stochastic tables): built by tests/sampling_vectors.py."""
    from sampling_vectors import build_scheduler_vectors as build

    return build()


def _write(tmp: Path) -> None:
    tokenizer_json, tok_cases = build_tokenizer_vectors(tmp)
    (VECTORS / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (VECTORS / "tokenizer_cases.json").write_text(json.dumps(tok_cases, indent=1, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    (VECTORS / "scheduler.json").write_text(json.dumps(build_scheduler_vectors(), indent=1) + "\n", encoding="utf-8")


def test_tokenizer_vectors_match_the_pipeline_tokenizer(tmp_path):
    tokenizer_json, cases = build_tokenizer_vectors(tmp_path)
    assert json.loads(tokenizer_json) == json.loads((VECTORS / "tokenizer.json").read_text(encoding="utf-8"))
    assert cases == json.loads((VECTORS / "tokenizer_cases.json").read_text(encoding="utf-8"))
    assert any(len([i for i in c["ids"] if i != c["ids"][-1]]) == MAX_LENGTH - 1 for c in cases["cases"])  # truncation


def test_scheduler_vectors_match_edgekit_schedule():
    stored = json.loads((VECTORS / "scheduler.json").read_text(encoding="utf-8"))
    fresh = build_scheduler_vectors()
    for a, b in zip(stored["cases"], fresh["cases"]):
        assert a["steps"] == b["steps"]
        # the tables come from diffusers' schedulers, which compute in float32 torch: another CPU (other SIMD
        # paths) differs in the last float32 place, measured up to 2.3e-7 in a coefficient and 8.9e-7 at -12
        # in a trajectory; edgekit.schedule checks its tables against diffusers at TABLE_CHECK_TOL as well
        np.testing.assert_allclose(a["expected"], b["expected"], rtol=TABLE_CHECK_TOL, atol=1e-6)
        np.testing.assert_allclose(a["table"]["sample_coeff"], b["table"]["sample_coeff"], rtol=TABLE_CHECK_TOL)


def test_runtime_tokenizer_reads_the_shipped_tokenizer_json():
    """edgekit.runtime.sampler tokenizes with the `tokenizers` library straight from tokenizer.json."""
    from edgekit.runtime.sampler import load_tokenizer

    cases = json.loads((VECTORS / "tokenizer_cases.json").read_text(encoding="utf-8"))
    encode = load_tokenizer(VECTORS / "tokenizer.json", cases["max_length"])
    for case in cases["cases"]:
        assert encode([case["text"]])[0].tolist() == case["ids"], case["text"]


def test_js_twins_pass_the_shared_vectors():
    """The browser's policy, tokenizer and scheduler modules run every vector under Node."""
    import subprocess

    proc = subprocess.run(["node", str(Path(__file__).with_name("web_twins.mjs"))], capture_output=True, text=True,
                          timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["failures"] == [], proc.stdout + proc.stderr
    assert result["passed"] >= 50


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        _write(Path(d))
    print(f"wrote {VECTORS}")
