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
