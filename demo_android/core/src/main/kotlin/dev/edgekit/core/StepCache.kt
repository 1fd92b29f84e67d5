package dev.edgekit.core

/**
 * Step caching (edgekit/step_cache.py, DeepCache) on the device: the manifest's sampling.step_cache says, per
 * offered interval and step count, which graph each UNet call of that step count's schedule table runs (a table
 * may make more calls than steps: SD-1.5's PNDM makes steps + 1) ("full": the UNet graph that also outputs the
 * feature entering its last up block, joined after the noise channels; "shallow": the small graph fed that
 * feature). This core only follows that data: no scheduler- or interval-specific logic. Same vectors as
 * Python and Swift (edgekit/twin_vectors/step_cache.json).
 */
class StepCacheException(message: String) : RuntimeException(message)

object StepCache {
    const val FULL = "full"
    const val SHALLOW = "shallow"

    /**
     * The plan for `interval` at `steps` steps from the manifest's "sampling" (null for 1: the plain loop): one
     * role per UNet call of the `steps`-step schedule table.
     */
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
        val table = (sampling["schedules"] as? Map<*, *>)?.get(steps.toString()) as? Map<*, *>
        val calls = (table?.get("timesteps") as? List<*>)?.size
            ?: throw StepCacheException("cache $interval: the bundle has no schedule for $steps steps")
        if (plan.size != calls || plan.firstOrNull() != FULL || plan.any { it != FULL && it != SHALLOW }) {
            throw StepCacheException("sampling.step_cache.plans.$interval.$steps: expected $calls of full/shallow " +
                "(one per UNet call of the $steps-step schedule table), the first full")
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
 * The UNet call `step` of the table runs the graph `plan[step]` names (null: `plain` every call); a call past the
 * plan is an error. Inputs and outputs hold `rows` rows in NCHW order, each of `pixels` pixels per channel; `full`
 * returns the noise channels then the feature channels, split at `noiseChannels`; the feature rows are kept for
 * the shallow calls after it.
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
        if (plan == null) return plain(x, t)
        val role = plan.getOrNull(step)
            ?: throw StepCacheException("step $step: past the plan's ${plan.size} UNet calls")
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
