package dev.edgekit.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

/** The shared vectors (edgekit/twin_vectors) through the pure-Kotlin core, as Python and JS run them. */
@Suppress("UNCHECKED_CAST")
class TwinVectorsTest {
    private val root: File = File(System.getProperty("edgekit.vectors") ?: "../../edgekit/twin_vectors")

    private fun load(name: String): Map<String, Any?> = Json.parse(File(root, name).readText()) as Map<String, Any?>

    private fun close(expected: Double, got: Double, rel: Double) = Math.abs(got - expected) <= rel * Math.max(1.0, Math.abs(expected))

    private fun table(v: Map<String, Any?>, name: Any?): List<Row> = parseTable((v["tables"] as Map<String, Any?>)[name as String])

    private fun runs(data: Any?): List<LatencyRun> = (data as List<Any?>).mapIndexed { i, r -> LatencyRun.fromMap(r, "latency runs[$i]") }

    @Test
    fun policyCases() {
        val v = load("policy.json")
        var checked = 0
        for (c in v["cases"] as List<Map<String, Any?>>) {
            val merged = LinkedHashMap(v["policy"] as Map<String, Any?>)
            merged.putAll(c["policy_overrides"] as Map<String, Any?>)
            val rows = table(v, c["table"])
            var ratio = 1.0
            val rescale = c["rescale"] as Map<String, Any?>?
            if (rescale != null) {
                ratio = latencyRatio(runs(rescale["runs"]), rows)
                assertTrue("${c["name"]}: ratio $ratio", close(rescale["ratio"] as Double, ratio, 1e-12))
            }
            var policy = Policy(PolicyConfig.fromMap(merged), rows, ratio)
            for (s in c["samples"] as List<Map<String, Any?>>) {
                val r = s["latency_ratio"]
                if (r != null) policy = policy.rescaled(r as Double)
                val d = policy.decideOrFallback(s["t"] as Double, s["state"]) { }
                val e = s["expect"] as Map<String, Any?>
                val where = "${c["name"]} t=${s["t"]}: $d"
                assertEquals(where, (e["steps"] as Double).toInt(), d.steps)
                assertEquals(where, e["width"] as Double, d.width, 0.0)
                assertEquals(where, e["reason"], d.reason)
                assertEquals(where, e["over_budget"], d.overBudget)
                assertTrue(where, close(e["budget_ms"] as Double, d.budgetMs, 1e-6))
                assertTrue(where, close(e["latency_ms"] as Double, d.latencyMs, 1e-6))
                checked++
            }
        }
        assertTrue(checked >= 60)
        for (r in v["latency_ratios"] as List<Map<String, Any?>>) {
            val got = latencyRatio(runs(r["runs"]), table(v, r["table"]))
            assertTrue("${r["name"]}: $got", close(r["ratio"] as Double, got, 1e-12))
        }
    }

    private fun expectError(needle: String, what: String, block: () -> Unit) {
        try {
            block()
            fail("$what: no error")
        } catch (e: PolicyException) {
            assertTrue("$what: ${e.message}", e.message!!.contains(needle))
        }
    }

    @Test
    fun badInputsAreRefusedWithTheKeyNamed() {
        val v = load("policy.json")
        for (b in v["bad_policies"] as List<Map<String, Any?>>) expectError(b["error_contains"] as String, b["name"] as String) { PolicyConfig.fromMap(b["policy"]) }
        for (b in v["bad_states"] as List<Map<String, Any?>>) expectError(b["error_contains"] as String, b["name"] as String) { DeviceState.fromMap(b["state"]) }
        for (b in v["bad_tables"] as List<Map<String, Any?>>) expectError(b["error_contains"] as String, b["name"] as String) { parseTable(b["table"]) }
        for (b in v["bad_rescales"] as List<Map<String, Any?>>) {
            val rows = table(v, b["table"])
            expectError(b["error_contains"] as String, b["name"] as String) {
                if ("runs" in b) latencyRatio(runs(b["runs"]), rows) else rescaleTable(rows, b["ratio"] as Double)
            }
        }
        for (b in v["bad_manifests"] as List<Map<String, Any?>>) {
            val manifest = b["manifest"] as Map<String, Any?>
            expectError(b["error_contains"] as String, b["name"] as String) { Policy.fromManifest(manifest) }
            val d = fallbackDecision(manifest, "test")
            val e = b["fallback"] as Map<String, Any?>
            assertEquals(b["name"] as String, (e["steps"] as Double).toInt(), d.steps)
            assertEquals(b["name"] as String, e["width"] as Double, d.width, 0.0)
            assertEquals("fallback", d.reason)
        }
    }

    @Test
    fun readsTheNonFiniteNumbersPythonWrites() {
        val m = Json.parse("{\"a\": -Infinity, \"b\": [NaN, -1.5e3, Infinity], \"c\": \"-Infinity\"}") as Map<String, Any?>
        assertEquals(Double.NEGATIVE_INFINITY, m["a"] as Double, 0.0)
        val b = m["b"] as List<Any?>
        assertTrue((b[0] as Double).isNaN())
        assertEquals(-1500.0, b[1] as Double, 0.0)
        assertEquals(Double.POSITIVE_INFINITY, b[2] as Double, 0.0)
        assertEquals("-Infinity", m["c"])
    }

    @Test
    fun tokenizerCases() {
        val v = load("tokenizer_cases.json")
        val tok = ClipTokenizer.fromTokenizerJson(File(root, v["tokenizer"] as String).readText())
        val max = (v["max_length"] as Double).toInt()
        for (c in v["cases"] as List<Map<String, Any?>>) {
            val expected = (c["ids"] as List<Any?>).map { (it as Double).toInt() }.toIntArray()
            assertArrayEquals("tokenizer ${c["text"]}", expected, tok.encode(c["text"] as String, max))
        }
    }

    @Test
    fun tokenizerPadsWithTheManifestPadId() {
        val v = load("tokenizer_pad_cases.json")
        val tok = ClipTokenizer.fromTokenizerJson(File(root, v["tokenizer"] as String).readText(), (v["pad_id"] as Double).toInt())
        val max = (v["max_length"] as Double).toInt()
        for (c in v["cases"] as List<Map<String, Any?>>) {
            val expected = (c["ids"] as List<Any?>).map { (it as Double).toInt() }.toIntArray()
            assertArrayEquals("tokenizer padded with ${v["pad"]}: ${c["text"]}", expected, tok.encode(c["text"] as String, max))
        }
    }

    @Test
    fun noiseGenerator() {
        val v = load("noise.json")
        fun longs(x: Any?) = (x as List<Any?>).map { (it as Double).toLong() }.toLongArray()
        for (k in v["philox4x32_10"] as List<Map<String, Any?>>) {
            assertArrayEquals("philox ${k["counter"]}", longs(k["words"]), Noise.philox4x32(longs(k["counter"]), longs(k["key"])))
        }
        for (s in v["streams"] as List<Map<String, Any?>>) {
            val seed = (s["seed"] as Double).toLong()
            val stream = (s["stream"] as Double).toLong()
            val words = longs(s["words"])
            assertArrayEquals("words $seed/$stream", words, Noise.words(seed, stream, words.size))
            val expected = (s["normals"] as List<Any?>).map { it as Double }
            val z = Noise.normals(seed, stream, expected.size)
            expected.forEachIndexed { i, e -> assertEquals("normals $seed/$stream [$i]", e, z[i], 1e-12) }
        }
    }

    @Test
    fun schedulerCases() {
        val v = load("scheduler.json")
        for (c in v["cases"] as List<Map<String, Any?>>) {
            val name = c["name"] as String
            val table = ScheduleTable.fromMap(c["table"] as Map<String, Any?>)
            val sampling = c["sampling"] as Map<String, Any?>
            val mode = guidanceMode(sampling)
            assertEquals(name, c["guidance_mode"], mode)
            val g = sampling["guidance_scale"] as Double
            val seed = (c["seed"] as Double).toLong()
            val n = (c["x0"] as List<Any?>).size
            val x0 = Noise.normals(seed, 0, n)
            (c["x0"] as List<Any?>).forEachIndexed { i, e -> assertEquals("$name x0[$i]", e as Double, x0[i], 1e-12) }
            var condCalls = 0
            var uncondCalls = 0
            var steps = 0
            val out = runTable(table, x0, { x, t, _ ->
                condCalls++
                val cond = DoubleArray(x.size) { 0.3 * x[it] + 0.001 * t + 0.01 * it }
                if (mode == GUIDANCE_CFG) {
                    uncondCalls++
                    guide(DoubleArray(x.size) { 0.2 * x[it] - 0.0005 * t }, cond, g)
                } else cond
            }, { _, _ -> steps++ }, { j -> Noise.normals(seed, (j + 1).toLong(), n) })
            assertEquals(name, table.steps, steps)
            assertEquals(name, (c["cond_calls"] as Double).toInt(), condCalls)
            assertEquals(name, (c["uncond_calls"] as Double).toInt(), uncondCalls)
            val expected = (c["expected"] as List<Any?>).map { it as Double }
            expected.forEachIndexed { i, e -> assertEquals("$name x[$i]", e, out[i], 1e-9 * Math.max(1.0, Math.abs(e))) }
        }
    }
}
