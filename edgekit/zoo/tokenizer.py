"""Write a CLIP byte-level BPE tokenizer (vocab.json + merges.txt) from a word list, with no download.

CLIP's vocabulary is learned on web text we cannot fetch here. For a small model the useful part is
the words its prompts use: every byte symbol (with and without the end-of-word mark) is in the
vocabulary so any text still tokenizes, and each listed word gets a left-to-right chain of merges
whose every intermediate result is also a vocabulary entry (transformers 5 refuses merges otherwise).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map GPT-2 and CLIP use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _word_symbols(word: str) -> list[str]:
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += EOW
    return symbols


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    base = list(bytes_to_unicode().values())
    vocab_list = base + [s + EOW for s in base]
    merges: list[tuple[str, str]] = []
    seen_merges: set[tuple[str, str]] = set()
    seen_tokens = set(vocab_list)
    for word in sorted({w.lower() for w in words if w}):
        symbols = _word_symbols(word)
        current = symbols[0]
        for nxt in symbols[1:]:
            pair = (current, nxt)
            current = current + nxt
            if pair not in seen_merges:
                seen_merges.add(pair)
                merges.append(pair)
            if current not in seen_tokens:
                seen_tokens.add(current)
                vocab_list.append(current)
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_clip_tokenizer(out_dir: Path, words: list[str], model_max_length: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
