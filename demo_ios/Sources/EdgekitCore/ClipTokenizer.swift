// CLIP byte-level BPE tokenizer read from the bundle's tokenizer.json, as the pipeline tokenizes: NFC,
// whitespace collapsed, lower case, CLIP's word pattern, BPE with "</w>" word ends,
// <|startoftext|> ids <|endoftext|>, truncated and padded with the manifest's tokenizer.pad_id (SD-1.x pads with
// <|endoftext|>, SD-2.x with "!", id 0). Checked by edgekit/twin_vectors/tokenizer_cases.json and
// tokenizer_pad_cases.json.
import Foundation

public final class ClipTokenizer {
    private let vocab: [String: Int]
    private let ranks: [String: Int]
    private let suffix: String
    private let bosId: Int
    private let eosId: Int
    private let padId: Int
    private let byteTable: [String]
    private var cache: [String: [String]] = [:]
    private static let word = try! NSRegularExpression(
        pattern: "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+")
    private static let spaces = try! NSRegularExpression(pattern: "\\s+")

    public init(vocab: [String: Int], merges: [(String, String)], suffix: String = "</w>",
                bos: String = "<|startoftext|>", eos: String = "<|endoftext|>", padId: Int? = nil) {
        self.vocab = vocab
        var r: [String: Int] = [:]
        for (i, m) in merges.enumerated() where r["\(m.0) \(m.1)"] == nil { r["\(m.0) \(m.1)"] = i }
        ranks = r
        self.suffix = suffix
        bosId = vocab[bos]!
        eosId = vocab[eos]!
        self.padId = padId ?? vocab[eos]!
        byteTable = ClipTokenizer.bytesToUnicode()
    }

    static func bytesToUnicode() -> [String] {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var chars = printable
        var extra = 0
        for b in 0..<256 where !printable.contains(b) { printable.append(b); chars.append(256 + extra); extra += 1 }
        var table = [String](repeating: "", count: 256)
        for (i, b) in printable.enumerated() { table[b] = String(Character(Unicode.Scalar(chars[i])!)) }
        return table
    }

    /// `padId`: the manifest's tokenizer.pad_id (nil: <|endoftext|>'s id).
    public static func fromTokenizerJson(_ data: Data, padId: Int? = nil) throws -> ClipTokenizer {
        guard let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let model = json["model"] as? [String: Any], let v = model["vocab"] as? [String: Int] else {
            throw PolicyError(message: "tokenizer.json: expected a BPE model with a vocab")
        }
        var vocab = v
        for t in (json["added_tokens"] as? [[String: Any]]) ?? [] { vocab[t["content"] as! String] = t["id"] as? Int }
        let merges: [(String, String)] = ((model["merges"] as? [Any]) ?? []).map { m in
            if let s = m as? String { let p = s.split(separator: " ", maxSplits: 1).map(String.init); return (p[0], p[1]) }
            let l = m as! [String]
            return (l[0], l[1])
        }
        return ClipTokenizer(vocab: vocab, merges: merges, suffix: (model["end_of_word_suffix"] as? String) ?? "</w>",
                             padId: padId)
    }

    private func bpe(_ word: String) -> [String] {
        if let hit = cache[word] { return hit }
        var parts = Array(word.utf8).map { byteTable[Int($0)] }
        parts[parts.count - 1] += suffix
        while parts.count > 1 {
            var best = -1
            var bestRank = Int.max
            for i in 0..<(parts.count - 1) {
                if let r = ranks["\(parts[i]) \(parts[i + 1])"], r < bestRank { bestRank = r; best = i }
            }
            if best < 0 { break }
            let a = parts[best], b = parts[best + 1]
            var merged: [String] = []
            var i = 0
            while i < parts.count {
                if i < parts.count - 1 && parts[i] == a && parts[i + 1] == b { merged.append(a + b); i += 2 } else { merged.append(parts[i]); i += 1 }
            }
            parts = merged
        }
        cache[word] = parts
        return parts
    }

    public func encode(_ text: String, maxLength: Int) -> [Int] {
        let nfc = text.precomposedStringWithCanonicalMapping
        let collapsed = ClipTokenizer.spaces.stringByReplacingMatches(
            in: nfc, range: NSRange(nfc.startIndex..., in: nfc), withTemplate: " ").lowercased()
        var ids: [Int] = []
        for m in ClipTokenizer.word.matches(in: collapsed, range: NSRange(collapsed.startIndex..., in: collapsed)) {
            let w = String(collapsed[Range(m.range, in: collapsed)!])
            for tok in bpe(w) { ids.append(vocab[tok] ?? eosId) }
        }
        var out = [bosId] + ids.prefix(maxLength - 2) + [eosId]
        while out.count < maxLength { out.append(padId) }
        return out
    }
}
