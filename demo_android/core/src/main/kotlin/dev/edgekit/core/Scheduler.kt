package dev.edgekit.core

/**
 * The device sampling loop over a manifest schedule table (edgekit/schedule.py): multiply-adds only,
 *   modelInput = inputScale[i] * x
 *   x = sampleCoeff[i] * x + sum_j epsCoeffs[i][j] * eps_j + sum_j noiseCoeffs[i][j] * z_j
 * so no diffusers scheduler is re-implemented on the phone; z_j is step j's noise from [Noise].
 * Checked by edgekit/twin_vectors/scheduler.json.
 */
class ScheduleTable(
    val timesteps: DoubleArray,
    val inputScale: DoubleArray,
    val sampleCoeff: DoubleArray,
    val epsCoeffs: List<DoubleArray>,
    val initNoiseSigma: Double,
    val noiseCoeffs: List<DoubleArray> = List(timesteps.size) { DoubleArray(0) },
    val scheduler: String = ""
) {
    val steps: Int get() = timesteps.size

    companion object {
        @Suppress("UNCHECKED_CAST")
        fun fromMap(m: Map<String, Any?>): ScheduleTable {
            fun doubles(k: String) = (m[k] as List<Any?>).map { it as Double }.toDoubleArray()
            fun rows(k: String) = (m[k] as List<List<Any?>>).map { row -> row.map { it as Double }.toDoubleArray() }
            val timesteps = doubles("timesteps")
            return ScheduleTable(timesteps, doubles("input_scale"), doubles("sample_coeff"), rows("eps_coeffs"),
                m["init_noise_sigma"] as Double,
                if (m["noise_coeffs"] != null) rows("noise_coeffs") else List(timesteps.size) { DoubleArray(0) },
                (m["scheduler"] as? String) ?: "")
        }
    }
}

/** `noise(j)`: step j's standard normal noise, e.g. `{ j -> Noise.normals(seed, j + 1, n) }` (stochastic tables). */
fun runTable(
    table: ScheduleTable,
    x0: DoubleArray,
    model: (input: DoubleArray, t: Double, step: Int) -> DoubleArray,
    onStep: ((done: Int, total: Int) -> Unit)? = null,
    noise: ((step: Int) -> DoubleArray)? = null
): DoubleArray {
    var x = DoubleArray(x0.size) { x0[it] * table.initNoiseSigma }
    val history = ArrayList<DoubleArray>()
    val drawn = HashMap<Int, DoubleArray>()
    for (i in 0 until table.steps) {
        val scale = table.inputScale[i]
        val xi = x
        history.add(model(DoubleArray(xi.size) { xi[it] * scale }, table.timesteps[i], i))
        val a = table.sampleCoeff[i]
        val next = DoubleArray(xi.size) { a * xi[it] }
        table.epsCoeffs[i].forEachIndexed { j, c ->
            if (c != 0.0) { val e = history[j]; for (k in next.indices) next[k] += c * e[k] }
        }
        table.noiseCoeffs[i].forEachIndexed { j, c ->
            if (c != 0.0) {
                val draw = noise ?: throw IllegalArgumentException("schedule table (${table.scheduler}): step $i adds noise; pass noise(step)")
                val z = drawn.getOrPut(j) { draw(j) }
                for (k in next.indices) next[k] += c * z[k]
            }
        }
        x = next
        onStep?.invoke(i + 1, table.steps)
    }
    return x
}

/** Classifier-free guidance: uncond + scale * (cond - uncond). */
fun guide(uncond: DoubleArray, cond: DoubleArray, scale: Double): DoubleArray =
    DoubleArray(cond.size) { uncond[it] + scale * (cond[it] - uncond[it]) }

const val GUIDANCE_CFG = "classifier-free"
const val GUIDANCE_CONDITIONAL = "conditional"
const val GUIDANCE_EMBEDDING = "embedding"

/**
 * How the manifest's sampling applies guidance, as diffusers does: classifier-free (two UNet passes, [guide])
 * only for guidance_scale > 1 on a UNet without a guidance embedding; conditional (the prompt's prediction
 * alone) for guidance_scale <= 1; embedding (conditional, guidance fed as the UNet's timestep_cond).
 */
fun guidanceMode(sampling: Map<String, Any?>): String {
    (sampling["guidance_mode"] as? String)?.let { return it }
    if (sampling["guidance_embedding"] != null) return GUIDANCE_EMBEDDING
    return if ((sampling["guidance_scale"] as Double) > 1.0) GUIDANCE_CFG else GUIDANCE_CONDITIONAL
}

/**
 * The shared counter-based noise (edgekit/noise.py): Philox4x32-10 keyed by (seed, stream) on counters
 * (block, 0, 0, 0), Box-Muller on word pairs. Stream 0: an image's initial latents; stream j + 1: step j's noise.
 */
object Noise {
    private const val M0 = 0xD2511F53L
    private const val M1 = 0xCD9E8D57L
    private const val W0 = 0x9E3779B9L
    private const val W1 = 0xBB67AE85L
    private const val MASK = 0xFFFFFFFFL

    /** Philox4x32-10 of four unsigned 32-bit counter words under (k0, k1); words held in Longs. */
    fun philox4x32(counter: LongArray, key: LongArray): LongArray {
        var c0 = counter[0] and MASK; var c1 = counter[1] and MASK; var c2 = counter[2] and MASK; var c3 = counter[3] and MASK
        var k0 = key[0] and MASK; var k1 = key[1] and MASK
        for (r in 0 until 10) {
            val p0 = M0 * c0  // < 2^64: the unsigned product's bits, read back with ushr
            val p1 = M1 * c2
            val n0 = ((p1 ushr 32) xor c1 xor k0) and MASK
            val n2 = ((p0 ushr 32) xor c3 xor k1) and MASK
            c1 = p1 and MASK; c3 = p0 and MASK; c0 = n0; c2 = n2
            if (r < 9) { k0 = (k0 + W0) and MASK; k1 = (k1 + W1) and MASK }
        }
        return longArrayOf(c0, c1, c2, c3)
    }

    fun words(seed: Long, stream: Long, count: Int): LongArray {
        val out = LongArray(count)
        var b = 0
        while (4 * b < count) {
            val w = philox4x32(longArrayOf(b.toLong(), 0, 0, 0), longArrayOf(seed, stream))
            for (k in 0 until 4) if (4 * b + k < count) out[4 * b + k] = w[k]
            b++
        }
        return out
    }

    fun normals(seed: Long, stream: Long, count: Int): DoubleArray {
        val pairs = (count + 1) / 2
        val w = words(seed, stream, 2 * pairs)
        val out = DoubleArray(count)
        for (p in 0 until pairs) {
            val u1 = (w[2 * p].toDouble() + 0.5) / 4294967296.0
            val u2 = (w[2 * p + 1].toDouble() + 0.5) / 4294967296.0
            val r = Math.sqrt(-2.0 * Math.log(u1))
            out[2 * p] = r * Math.cos(2.0 * Math.PI * u2)
            if (2 * p + 1 < count) out[2 * p + 1] = r * Math.sin(2.0 * Math.PI * u2)
        }
        return out
    }
}
