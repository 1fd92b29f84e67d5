package dev.edgekit.core

/**
 * Step caching (edgekit/step_cache.py, DeepCache) on the device: the manifest's sampling.step_cache says, per
 * offered interval and step count, which graph each step runs ("full": the UNet graph that also outputs the
 * feature entering its last up block, joined after the noise channels; "shallow": the small graph fed that
 * feature). This core only follows that data: no scheduler- or interval-specific logic. Same vectors as
 * Python and Swift (edgekit/twin_vectors/step_cache.json).
 */
class StepCacheException(message: String) : RuntimeException(message)

object StepCache {
    const val FULL = "full"
    const val SHALLOW = "shallow"

    /** The plan for `interval` at `steps` steps from the manifest's "sampling" (null for 1: the plain loop). */
    fun plan(sampling: Map<String, Any?>, interval: Int, steps: Int): List<String>? {
        if (interval < 1) throw StepCacheException("cache $interval: expected a whole number >= 1 (1 = no step caching)")
        if (interval == 1) return null
        val section = sampling["step_cache"] as? Map<*, *>
        val plans = section?.get("plans") as? Map<*, *>
        val bySteps = plans?.get(interval.toString()) as? Map<*, *>
            ?: throw StepCacheException("cache $interval: the bundle offers no step-cache plan at this interval " +
                "(offers: ${listOf("1") + (plans?.keys?.map { it.toString() } ?: emptyList())})")
        val plan = bySteps[steps.toString()] as? List<*>
            ?: throw StepCacheException("cache $interval: the bundle has no $steps-step plan at this interval")
        if (plan.size != steps || plan.firstOrNull() != FULL || plan.any { it != FULL && it != SHALLOW }) {
            throw StepCacheException("sampling.step_cache.plans.$interval.$steps: expected $steps of full/shallow, the first full")
        }
        return plan.map { it as String }
    }

    /** The graphs a plan's roles name (manifest component keys), and where the full graph's output splits. */
    fun graphs(sampling: Map<String, Any?>): Triple<String, String, Int> {
        val section = sampling["step_cache"] as? Map<*, *> ?: throw StepCacheException("sampling.step_cache missing")
        val graphs = section["graphs"] as Map<*, *>
        val out = section["full_output"] as Map<*, *>
        return Triple(graphs[FULL] as String, graphs[SHALLOW] as String, (out["noise_channels"] as Double).toInt())
    }
}

/**
 * One UNet call per step following `plan` (null: `plain` every step). Inputs and outputs hold `rows` rows in
 * NCHW order, each of `pixels` pixels per channel; `full` returns the noise channels then the feature channels,
 * split at `noiseChannels`; the feature rows are kept for the shallow steps after it.
 */
class CachedUNet(
    private val plan: List<String>?,
    private val noiseChannels: Int,
    private val pixels: Int,
    private val plain: (x: DoubleArray, t: Double) -> DoubleArray,
    private val full: (x: DoubleArray, t: Double) -> DoubleArray,
    private val shallow: (x: DoubleArray, t: Double, feature: DoubleArray) -> DoubleArray
) {
    private var feature: DoubleArray? = null

    fun call(step: Int, x: DoubleArray, t: Double, rows: Int): DoubleArray {
        val role = plan?.get(step) ?: return plain(x, t)
        if (role == StepCache.SHALLOW) {
            return shallow(x, t, feature ?: throw StepCacheException("step $step: a shallow step before any full step"))
        }
        val out = full(x, t)
        val per = out.size / rows
        val eps = noiseChannels * pixels
        val noise = DoubleArray(rows * eps)
        val kept = DoubleArray(rows * (per - eps))
        for (r in 0 until rows) {
            System.arraycopy(out, r * per, noise, r * eps, eps)
            System.arraycopy(out, r * per + eps, kept, r * (per - eps), per - eps)
        }
        feature = kept
        return noise
    }
}
