package dev.edgekit.core

/**
 * A small JSON reader (objects -> Map, arrays -> List, numbers -> Double) so the core needs no library.
 * Also reads the bare NaN / Infinity / -Infinity that Python's json module writes.
 */
class JsonException(message: String) : RuntimeException(message)

object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skip()
        val value = p.value()
        p.skip()
        if (p.i != text.length) throw JsonException("unexpected text at offset ${p.i}")
        return value
    }

    private class Parser(val s: String) {
        var i = 0

        fun skip() {
            while (i < s.length && s[i].isWhitespace()) i++
        }

        fun value(): Any? {
            if (i >= s.length) throw JsonException("unexpected end of JSON")
            return when (s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> word("true", true)
                'f' -> word("false", false)
                'n' -> word("null", null)
                // Python's json writes these bare (e.g. diffusers' lambda_min_clipped = -inf)
                'N' -> word("NaN", Double.NaN)
                'I' -> word("Infinity", Double.POSITIVE_INFINITY)
                '-' -> if (s.startsWith("-Infinity", i)) word("-Infinity", Double.NEGATIVE_INFINITY) else num()
                else -> num()
            }
        }

        fun word(w: String, v: Any?): Any? {
            if (!s.startsWith(w, i)) throw JsonException("bad literal at offset $i")
            i += w.length
            return v
        }

        fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            i++
            skip()
            if (s[i] == '}') { i++; return out }
            while (true) {
                skip()
                val k = str()
                skip()
                if (s[i] != ':') throw JsonException("expected ':' at offset $i")
                i++
                skip()
                out[k] = value()
                skip()
                when (s[i]) {
                    ',' -> i++
                    '}' -> { i++; return out }
                    else -> throw JsonException("expected ',' or '}' at offset $i")
                }
            }
        }

        fun arr(): List<Any?> {
            val out = ArrayList<Any?>()
            i++
            skip()
            if (s[i] == ']') { i++; return out }
            while (true) {
                skip()
                out.add(value())
                skip()
                when (s[i]) {
                    ',' -> i++
                    ']' -> { i++; return out }
                    else -> throw JsonException("expected ',' or ']' at offset $i")
                }
            }
        }

        fun str(): String {
            if (s[i] != '"') throw JsonException("expected a string at offset $i")
            i++
            val sb = StringBuilder()
            while (true) {
                val c = s[i++]
                when (c) {
                    '"' -> return sb.toString()
                    '\\' -> {
                        val e = s[i++]
                        when (e) {
                            'n' -> sb.append('\n'); 't' -> sb.append('\t'); 'r' -> sb.append('\r')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000C')
                            'u' -> { sb.append(s.substring(i, i + 4).toInt(16).toChar()); i += 4 }
                            else -> sb.append(e)
                        }
                    }
                    else -> sb.append(c)
                }
            }
        }

        fun num(): Double {
            val start = i
            while (i < s.length && (s[i].isDigit() || s[i] in "+-.eE")) i++
            return s.substring(start, i).toDoubleOrNull() ?: throw JsonException("bad number at offset $start")
        }
    }
}
