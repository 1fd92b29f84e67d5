package dev.edgekit.core

/**
 * The device sampling loop over a manifest schedule table (edgekit/schedule.py): multiply-adds only,
 *   modelInput = inputScale[i] * x;  x = sampleCoeff[i] * x + sum_j epsCoeffs[i][j] * eps_j
 * so no diffusers scheduler is re-implemented on the phone. Checked by edgekit/twin_vectors/scheduler.json.
 */
class ScheduleTable(
    val timesteps: DoubleArray,
    val inputScale: DoubleArray,
    val sampleCoeff: DoubleArray,
    val epsCoeffs: List<DoubleArray>,
    val initNoiseSigma: Double
) {
    val steps: Int get() = timesteps.size

    companion object {
        @Suppress("UNCHECKED_CAST")
        fun fromMap(m: Map<String, Any?>): ScheduleTable {
            fun doubles(k: String) = (m[k] as List<Any?>).map { it as Double }.toDoubleArray()
            return ScheduleTable(doubles("timesteps"), doubles("input_scale"), doubles("sample_coeff"),
                (m["eps_coeffs"] as List<List<Any?>>).map { row -> row.map { it as Double }.toDoubleArray() },
                m["init_noise_sigma"] as Double)
        }
    }
}

fun runTable(
    table: ScheduleTable,
    x0: DoubleArray,
    model: (input: DoubleArray, t: Double, step: Int) -> DoubleArray,
    onStep: ((done: Int, total: Int) -> Unit)? = null
): DoubleArray {
    var x = DoubleArray(x0.size) { x0[it] * table.initNoiseSigma }
    val history = ArrayList<DoubleArray>()
    for (i in 0 until table.steps) {
        val scale = table.inputScale[i]
        val xi = x
        history.add(model(DoubleArray(xi.size) { xi[it] * scale }, table.timesteps[i], i))
        val a = table.sampleCoeff[i]
        val next = DoubleArray(xi.size) { a * xi[it] }
        table.epsCoeffs[i].forEachIndexed { j, c ->
            if (c != 0.0) { val e = history[j]; for (k in next.indices) next[k] += c * e[k] }
        }
        x = next
        onStep?.invoke(i + 1, table.steps)
    }
    return x
}

/** Classifier-free guidance: uncond + scale * (cond - uncond). */
fun guide(uncond: DoubleArray, cond: DoubleArray, scale: Double): DoubleArray =
    DoubleArray(cond.size) { uncond[it] + scale * (cond[it] - uncond[it]) }
