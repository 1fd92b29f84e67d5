import json

from transformers import CLIPTokenizer

from edgekit.zoo.tokenizer import EOS, build_vocab_and_merges, write_clip_tokenizer


def test_every_merge_result_is_in_the_vocabulary():
    vocab, merges = build_vocab_and_merges(["handwritten", "hand", "digit", "seven"])
    for a, b in merges:
        assert a in vocab and b in vocab and a + b in vocab


def test_prompt_words_are_single_tokens_and_any_text_still_tokenizes(tmp_path):
    write_clip_tokenizer(tmp_path, ["a", "handwritten", "digit", "seven", "hand"], model_max_length=16)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tok("A Handwritten digit seven", padding="max_length", max_length=16).input_ids
    assert tok.convert_ids_to_tokens(ids[:6]) == ["<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>",
                                                  "seven</w>", EOS]
    assert len(ids) == 16
    unknown = tok("zebra crossing!").input_ids
    assert tok.decode(unknown, skip_special_tokens=True).replace(" ", "") == "zebracrossing!"
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 16


def test_sd2_style_padding_vectors_match_transformers(tmp_path):
    """SD-2.x tokenizers pad with "!" (id 0), not <|endoftext|>: the vectors every twin pads by."""
    from pathlib import Path

    from sampling_vectors import VECTORS, build_pad_vectors

    stored = json.loads((VECTORS / "tokenizer_pad_cases.json").read_text(encoding="utf-8"))
    assert stored == build_pad_vectors(Path(tmp_path))
    assert stored["pad_id"] == 0 and any(c["ids"][-1] == 0 for c in stored["cases"])


def test_runtime_tokenizer_pads_with_the_manifest_pad_id():
    from sampling_vectors import VECTORS

    from edgekit.runtime.sampler import load_tokenizer

    cases = json.loads((VECTORS / "tokenizer_pad_cases.json").read_text(encoding="utf-8"))
    encode = load_tokenizer(VECTORS / cases["tokenizer"], cases["max_length"], cases["pad_id"])
    for case in cases["cases"]:
        assert encode([case["text"]])[0].tolist() == case["ids"], case["text"]
