// CLIP byte-level BPE tokenizer read from a tokenizer.json (Hugging Face `tokenizers` format), as the
// pipeline tokenizes: NFC, whitespace collapsed, lower case, CLIP's word pattern, BPE with "</w>" word
// ends, <|startoftext|> ids <|endoftext|>, truncated and padded to the model's max length with the
// manifest's tokenizer.pad_id (SD-1.x pads with <|endoftext|>, SD-2.x with "!", id 0). Checked against
// transformers' CLIPTokenizer by edgekit/twin_vectors/tokenizer_cases.json and tokenizer_pad_cases.json.

const WORD = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/gu;

function bytesToUnicode() {
  const printable = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const chars = [...printable];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!printable.includes(b)) { printable.push(b); chars.push(256 + extra); extra++; }
  }
  const table = new Array(256);
  printable.forEach((b, i) => { table[b] = String.fromCodePoint(chars[i]); });
  return table;
}

export class ClipTokenizer {
  constructor(vocab, merges, { bos = "<|startoftext|>", eos = "<|endoftext|>", pad = null, padId = null, suffix = "</w>" } = {}) {
    this.vocab = vocab;
    this.ranks = new Map(merges.map((m, i) => [Array.isArray(m) ? m.join(" ") : m, i]));
    this.suffix = suffix;
    this.bosId = vocab[bos];
    this.eosId = vocab[eos];
    this.padId = padId ?? vocab[pad ?? eos];
    this.byteTable = bytesToUnicode();
    this.encoder = new TextEncoder();
    this.cache = new Map();
  }

  // `padId`: the manifest's tokenizer.pad_id (default: <|endoftext|>'s id).
  static fromTokenizerJson(json, { padId = null } = {}) {
    const model = json.model;
    if (!model || model.type !== "BPE") throw new Error("tokenizer.json: expected a BPE model");
    const added = Object.fromEntries((json.added_tokens ?? []).map((t) => [t.content, t.id]));
    const vocab = { ...model.vocab, ...added };
    return new ClipTokenizer(vocab, model.merges, { suffix: model.end_of_word_suffix ?? "</w>", padId });
  }

  bpe(word) {
    if (this.cache.has(word)) return this.cache.get(word);
    const symbols = Array.from(this.encoder.encode(word), (b) => this.byteTable[b]);
    symbols[symbols.length - 1] += this.suffix;
    let parts = symbols;
    while (parts.length > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const r = this.ranks.get(`${parts[i]} ${parts[i + 1]}`);
        if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
      }
      if (best < 0) break;
      const a = parts[best], b = parts[best + 1];
      const merged = [];
      for (let i = 0; i < parts.length; i++) {
        if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) { merged.push(a + b); i++; }
        else merged.push(parts[i]);
      }
      parts = merged;
    }
    this.cache.set(word, parts);
    return parts;
  }

  encode(text, maxLength) {
    const clean = text.normalize("NFC").replace(/\s+/gu, " ").toLowerCase();
    const ids = [];
    for (const word of clean.match(WORD) ?? []) {
      for (const tok of this.bpe(word)) ids.push(this.vocab[tok] ?? this.eosId);
    }
    const out = [this.bosId, ...ids.slice(0, maxLength - 2), this.eosId];
    while (out.length < maxLength) out.push(this.padId);
    return out;
  }
}
