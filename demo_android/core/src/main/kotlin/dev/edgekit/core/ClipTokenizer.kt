package dev.edgekit.core

import java.text.Normalizer
import java.util.Locale

/**
 * CLIP byte-level BPE tokenizer read from the bundle's tokenizer.json, as the pipeline tokenizes:
 * NFC, whitespace collapsed, lower case, CLIP's word pattern, BPE with "</w>" word ends,
 * <|startoftext|> ids <|endoftext|>, truncated and padded to max length with the manifest's tokenizer.pad_id
 * (SD-1.x pads with <|endoftext|>, SD-2.x with "!", id 0). Checked against edgekit/twin_vectors/
 * tokenizer_cases.json and tokenizer_pad_cases.json (made by transformers' CLIPTokenizer).
 */
class ClipTokenizer(
    private val vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    private val suffix: String = "</w>",
    bos: String = "<|startoftext|>",
    eos: String = "<|endoftext|>",
    padId: Int? = null
) {
    private val ranks: Map<Pair<String, String>, Int> = merges.withIndex().associate { it.value to it.index }
    private val bosId = vocab.getValue(bos)
    private val eosId = vocab.getValue(eos)
    private val padId = padId ?: eosId
    private val byteTable = bytesToUnicode()
    private val cache = HashMap<String, List<String>>()

    companion object {
        // (?U): Java's \s, \p classes follow Unicode, as the Rust regex in `tokenizers` does.
        private val WORD = Regex("(?U)<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+")
        private val SPACES = Regex("(?U)\\s+")

        fun bytesToUnicode(): Array<String> {
            val printable = ArrayList<Int>()
            printable.addAll(33..126); printable.addAll(161..172); printable.addAll(174..255)
            val chars = ArrayList<Int>(printable)
            var extra = 0
            for (b in 0 until 256) if (b !in printable) { printable.add(b); chars.add(256 + extra); extra++ }
            val table = Array(256) { "" }
            printable.forEachIndexed { i, b -> table[b] = String(Character.toChars(chars[i])) }
            return table
        }

        @Suppress("UNCHECKED_CAST")
        /** `padId`: the manifest's tokenizer.pad_id (null: <|endoftext|>'s id). */
        fun fromTokenizerJson(text: String, padId: Int? = null): ClipTokenizer {
            val json = Json.parse(text) as Map<String, Any?>
            val model = json["model"] as Map<String, Any?>
            val vocab = HashMap<String, Int>()
            (model["vocab"] as Map<String, Any?>).forEach { (k, v) -> vocab[k] = (v as Double).toInt() }
            (json["added_tokens"] as? List<Map<String, Any?>>)?.forEach { vocab[it["content"] as String] = (it["id"] as Double).toInt() }
            val merges = (model["merges"] as List<Any?>).map {
                if (it is String) { val p = it.split(" "); Pair(p[0], p[1]) } else { val l = it as List<*>; Pair(l[0] as String, l[1] as String) }
            }
            return ClipTokenizer(vocab, merges, (model["end_of_word_suffix"] as? String) ?: "</w>", padId = padId)
        }
    }

    private fun bpe(word: String): List<String> {
        cache[word]?.let { return it }
        var parts = word.toByteArray(Charsets.UTF_8).map { byteTable[it.toInt() and 0xFF] }.toMutableList()
        parts[parts.size - 1] = parts.last() + suffix
        while (parts.size > 1) {
            var best = -1
            var bestRank = Int.MAX_VALUE
            for (i in 0 until parts.size - 1) {
                val r = ranks[Pair(parts[i], parts[i + 1])]
                if (r != null && r < bestRank) { bestRank = r; best = i }
            }
            if (best < 0) break
            val a = parts[best]
            val b = parts[best + 1]
            val merged = ArrayList<String>()
            var i = 0
            while (i < parts.size) {
                if (i < parts.size - 1 && parts[i] == a && parts[i + 1] == b) { merged.add(a + b); i += 2 } else { merged.add(parts[i]); i++ }
            }
            parts = merged
        }
        cache[word] = parts
        return parts
    }

    fun encode(text: String, maxLength: Int): IntArray {
        val clean = SPACES.replace(Normalizer.normalize(text, Normalizer.Form.NFC), " ").toLowerCase(Locale.ROOT)
        val ids = ArrayList<Int>()
        for (m in WORD.findAll(clean)) for (tok in bpe(m.value)) ids.add(vocab[tok] ?: eosId)
        val out = ArrayList<Int>()
        out.add(bosId)
        out.addAll(ids.take(maxLength - 2))
        out.add(eosId)
        while (out.size < maxLength) out.add(padId)
        return out.toIntArray()
    }
}
