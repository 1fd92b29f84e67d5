package dev.edgekit.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

/** edgekit/twin_vectors/step_cache.json and policy_cache.json through the Kotlin core, as Python runs them. */
@Suppress("UNCHECKED_CAST")
class StepCacheTest {
    private val root: File = File(System.getProperty("edgekit.vectors") ?: "../../edgekit/twin_vectors")

    private fun load(name: String): Map<String, Any?> = Json.parse(File(root, name).readText()) as Map<String, Any?>

    // the vectors' fake graphs (step_cache.json "model"), one row of 6 latent values
    private fun full(x: DoubleArray, t: Double, h: Double): DoubleArray {
        val eps = DoubleArray(6) { 0.3 * x[it] + 0.001 * t + 0.01 * it + 0.05 * h }
        val feat = DoubleArray(3) { Math.tanh(0.5 * x[it] + 0.4 * x[3 + it]) + 0.002 * t + 0.1 * h }
        return eps + feat
    }

    private fun shallow(x: DoubleArray, t: Double, h: Double, f: DoubleArray) =
        DoubleArray(6) { 0.25 * x[it] + 0.001 * t + 0.01 * it + 0.05 * h + 0.2 * f[it % 3] }

    @Test
    fun cachedLoopsFollowThePlan() {
        val v = load("step_cache.json")
        val sampling = v["sampling"] as Map<String, Any?>
        val (fullName, shallowName, noiseChannels) = StepCache.graphs(sampling)
        assertEquals("unet_full", fullName)
        assertEquals("unet_shallow", shallowName)
        for (c in v["cases"] as List<Map<String, Any?>>) {
            val steps = (c["steps"] as Double).toInt()
            val interval = (c["interval"] as Double).toInt()
            val plan = StepCache.plan(sampling, interval, steps)
            assertEquals("plan $interval/$steps", c["plan"], plan)
            val cfg = c["guidance_mode"] == GUIDANCE_CFG
            val heads = if (cfg) doubleArrayOf(0.0, 1.0) else doubleArrayOf(1.0)
            val rows = heads.size
            // the graphs take every row at once (a batch-2 call under guidance), as a device feeds them
            fun batch(x: DoubleArray, f: (DoubleArray, Double) -> DoubleArray) =
                heads.map { h -> f(x, h) }.reduce { a, b -> a + b }
            val unet = CachedUNet(plan, noiseChannels, 3,
                { x, t -> batch(x) { xi, h -> full(xi, t, h).copyOfRange(0, 6) } },
                { x, t -> batch(x) { xi, h -> full(xi, t, h) } },
                { x, t, feature -> heads.mapIndexed { r, h -> shallow(x, t, h, feature.copyOfRange(3 * r, 3 * r + 3)) }
                    .reduce { a, b -> a + b } })
            val table = ScheduleTable.fromMap((sampling["schedules"] as Map<String, Any?>)[steps.toString()] as Map<String, Any?>)
            val seed = (c["seed"] as Double).toLong()
            val out = runTable(table, Noise.normals(seed, 0, 6), { x, t, step ->
                val eps = unet.call(step, x, t, rows)
                if (cfg) guide(eps.copyOfRange(0, 6), eps.copyOfRange(6, 12), c["guidance_scale"] as Double) else eps
            })
            val expected = (c["expected"] as List<Any?>).map { it as Double }
            expected.forEachIndexed { i, e -> assertEquals("interval $interval x[$i]", e, out[i], 1e-9 * Math.max(1.0, Math.abs(e))) }
        }
        for (b in v["bad_plans"] as List<Map<String, Any?>>) {
            try {
                StepCache.plan(sampling, (b["interval"] as Double).toInt(), (b["steps"] as Double).toInt())
                fail("$b: no error")
            } catch (e: StepCacheException) {
                assertTrue("$b: ${e.message}", e.message!!.contains(b["error_contains"] as String))
            }
        }
    }

    @Test
    fun policyPicksCachedRows() {
        val v = load("policy_cache.json")
        val params = load("policy.json")["policy"]
        var cachedChosen = 0
        for (c in v["cases"] as List<Map<String, Any?>>) {
            val rows = parseTable((v["tables"] as Map<String, Any?>)[c["table"] as String])
            val policy = Policy(PolicyConfig.fromMap(params), rows)
            for (s in c["samples"] as List<Map<String, Any?>>) {
                val d = policy.decideOrFallback(s["t"] as Double, s["state"]) { }
                val e = s["expect"] as Map<String, Any?>
                val where = "${c["name"]} t=${s["t"]}: $d"
                assertEquals(where, (e["steps"] as Double).toInt(), d.steps)
                assertEquals(where, e["width"] as Double, d.width, 0.0)
                assertEquals(where, (e["cache"] as Double).toInt(), d.cache)
                assertEquals(where, e["reason"], d.reason)
                assertEquals(where, e["over_budget"], d.overBudget)
                assertTrue(where, Math.abs(d.budgetMs - (e["budget_ms"] as Double)) <= 1e-6 * Math.max(1.0, d.budgetMs))
                if (d.cache > 1) cachedChosen++
            }
        }
        assertTrue(cachedChosen > 0)
        for (r in v["latency_ratios"] as List<Map<String, Any?>>) {
            val runs = (r["runs"] as List<Any?>).mapIndexed { i, x -> LatencyRun.fromMap(x, "latency runs[$i]") }
            val got = latencyRatio(runs, parseTable((v["tables"] as Map<String, Any?>)[r["table"] as String]))
            assertEquals(r["name"] as String, r["ratio"] as Double, got, 1e-12)
        }
        for (b in v["bad_tables"] as List<Map<String, Any?>>) {
            try {
                parseTable(b["rows"])
                fail("${b["name"]}: no error")
            } catch (e: PolicyException) {
                assertTrue("${b["name"]}: ${e.message}", e.message!!.contains(b["error_contains"] as String))
            }
        }
    }
}
