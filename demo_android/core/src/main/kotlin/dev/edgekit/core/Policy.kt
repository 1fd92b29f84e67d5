package dev.edgekit.core

/**
 * Runtime policy twin of edgekit/policy.py: device state -> (steps, width) from the manifest's measured
 * table, with hysteresis. Same rule, same parameters (manifest "policy"), same vectors
 * (edgekit/twin_vectors/policy.json). Pure Kotlin: the Android glue feeds it PowerManager and
 * BatteryManager readings.
 */
class PolicyException(message: String) : RuntimeException(message)

val THERMAL_STATES = listOf("nominal", "fair", "serious", "critical")
private val POLICY_KEYS = listOf("format", "thermal_budget", "battery_tiers", "low_power_factor",
    "headroom_thresholds", "dwell_s", "reference_latency_ms", "min_prompt_accuracy")
private val STATE_KEYS = listOf("battery_level", "charging", "low_power", "thermal", "headroom", "t")

private fun num(v: Any?, where: String, low: Double? = null, high: Double? = null, lowOpen: Boolean = false): Double {
    if (v !is Double || v.isNaN() || v.isInfinite()) throw PolicyException("$where: expected a number, got $v")
    if (low != null && (v < low || (lowOpen && v == low))) {
        throw PolicyException("$where: expected a number ${if (lowOpen) ">" else ">="} $low, got $v")
    }
    if (high != null && v > high) throw PolicyException("$where: expected a number <= $high, got $v")
    return v
}

private fun unknownKeys(m: Map<String, Any?>, allowed: List<String>, where: String) {
    for (k in m.keys) if (k !in allowed) {
        throw PolicyException("$where: unknown key '$k' (expected one of ${allowed.joinToString(", ")})")
    }
}

@Suppress("UNCHECKED_CAST")
private fun asMap(v: Any?, where: String): Map<String, Any?> =
    v as? Map<String, Any?> ?: throw PolicyException("$where: expected an object")

data class BatteryTier(val below: Double, val factor: Double)

data class PolicyConfig(
    val thermalBudget: Map<String, Double>,
    val batteryTiers: List<BatteryTier>,
    val lowPowerFactor: Double,
    val headroomThresholds: Map<String, Double>,
    val dwellS: Double,
    val referenceLatencyMs: Double?,
    val minPromptAccuracy: Double = 0.0
) {
    companion object {
        fun fromMap(data: Any?, where: String = "policy"): PolicyConfig {
            val m = asMap(data, where)
            if (m.isEmpty()) throw PolicyException("$where: expected a non-empty policy object")
            unknownKeys(m, POLICY_KEYS, where)
            if (m["thermal_budget"] !is Map<*, *>) {
                throw PolicyException("$where.thermal_budget: expected an object with a fraction per thermal state")
            }
            val budget = asMap(m["thermal_budget"], "$where.thermal_budget")
            unknownKeys(budget, THERMAL_STATES, "$where.thermal_budget")
            val thermal = LinkedHashMap<String, Double>()
            for (s in THERMAL_STATES) {
                if (s !in budget) throw PolicyException("$where.thermal_budget: missing $s")
                thermal[s] = num(budget[s], "$where.thermal_budget.$s", 0.0, null, true)
            }
            for (k in 1 until THERMAL_STATES.size) {
                val worse = THERMAL_STATES[k]
                val better = THERMAL_STATES[k - 1]
                if (thermal.getValue(worse) > thermal.getValue(better)) {
                    throw PolicyException("$where.thermal_budget: '$worse' must not exceed '$better'")
                }
            }
            val rawTiers = m["battery_tiers"] ?: emptyList<Any?>()
            val tiers = (rawTiers as? List<*> ?: throw PolicyException("$where.battery_tiers: expected a list"))
                .mapIndexed { i, t ->
                    val w = "$where.battery_tiers[$i]"
                    val tm = asMap(t, w)
                    unknownKeys(tm, listOf("below", "factor"), w)
                    BatteryTier(num(tm["below"], "$w.below", 0.0, 1.0), num(tm["factor"], "$w.factor", 0.0, 1.0, true))
                }
            val heads = asMap(m["headroom_thresholds"] ?: emptyMap<String, Any?>(), "$where.headroom_thresholds")
            unknownKeys(heads, THERMAL_STATES.drop(1), "$where.headroom_thresholds")
            val headroom = heads.mapValues { (k, v) -> num(v, "$where.headroom_thresholds.$k", 0.0) }
            val ref = m["reference_latency_ms"]
            return PolicyConfig(
                thermal, tiers,
                num(m["low_power_factor"] ?: 0.5, "$where.low_power_factor", 0.0, 1.0, true),
                headroom,
                num(m["dwell_s"] ?: 10.0, "$where.dwell_s", 0.0),
                if (ref == null) null else num(ref, "$where.reference_latency_ms", 0.0, null, true),
                num(m["min_prompt_accuracy"] ?: 0.0, "$where.min_prompt_accuracy", 0.0, 1.0)
            )
        }
    }
}

data class DeviceState(
    val batteryLevel: Double,
    val charging: Boolean,
    val lowPower: Boolean,
    val thermal: String,
    val headroom: Double? = null
) {
    companion object {
        fun fromMap(data: Any?, where: String = "state"): DeviceState {
            val m = asMap(data, where)
            unknownKeys(m, STATE_KEYS, where)
            for (k in listOf("battery_level", "charging", "low_power", "thermal")) {
                if (k !in m) throw PolicyException("$where: missing '$k'")
            }
            val thermal = m["thermal"]
            if (thermal !is String || thermal !in THERMAL_STATES) {
                throw PolicyException("$where.thermal: unknown thermal state $thermal")
            }
            val charging = m["charging"] as? Boolean ?: throw PolicyException("$where.charging: expected true or false")
            val lowPower = m["low_power"] as? Boolean ?: throw PolicyException("$where.low_power: expected true or false")
            val headroom = m["headroom"]
            return DeviceState(num(m["battery_level"], "$where.battery_level (0..1)", 0.0, 1.0), charging, lowPower,
                thermal, if (headroom == null) null else num(headroom, "$where.headroom", 0.0))
        }
    }
}

data class Row(
    val width: Double,
    val steps: Int,
    val latencyMs: Double,
    val promptAccuracy: Double,
    val frechetDistance: Double?
)

/** Smaller is better: accuracy, then Frechet distance, then the cheaper, then the wider, then more steps. */
val QUALITY_ORDER: Comparator<Row> = compareBy<Row>({ -it.promptAccuracy }, { it.frechetDistance ?: Double.POSITIVE_INFINITY },
    { it.latencyMs }, { -it.width }, { -it.steps })

fun parseTable(rows: Any?, where: String = "table"): List<Row> {
    val list = rows as? List<*> ?: throw PolicyException("$where: expected a non-empty list of measured rows")
    if (list.isEmpty()) throw PolicyException("$where: expected a non-empty list of measured rows")
    val seen = HashSet<Pair<Double, Int>>()
    return list.mapIndexed { i, r ->
        val w = "$where[$i]"
        val m = asMap(r, w)
        for (k in listOf("width", "steps", "latency_ms", "prompt_accuracy")) if (k !in m) throw PolicyException("$w: missing '$k'")
        val steps = num(m["steps"], "$w.steps", 1.0)
        if (steps != Math.floor(steps)) throw PolicyException("$w.steps: expected a positive whole number")
        val fd = m["frechet_distance"]
        val row = Row(num(m["width"], "$w.width", 0.0, 1.0, true), steps.toInt(),
            num(m["latency_ms"], "$w.latency_ms", 0.0, null, true), num(m["prompt_accuracy"], "$w.prompt_accuracy", 0.0, 1.0),
            if (fd == null) null else num(fd, "$w.frechet_distance", 0.0))
        if (!seen.add(Pair(row.width, row.steps))) throw PolicyException("$w: a second row for width ${row.width} and ${row.steps} steps")
        row
    }
}

data class Decision(
    val t: Double,
    val steps: Int,
    val width: Double,
    val latencyMs: Double,
    val budgetMs: Double,
    val reason: String,
    val overBudget: Boolean,
    val detail: String
)

class Policy(val config: PolicyConfig, val rows: List<Row>) {
    // Rows below the accuracy floor are never chosen (e.g. a slimmed width not yet recovered).
    private val eligible = rows.filter { it.promptAccuracy >= config.minPromptAccuracy }.also {
        if (it.isEmpty()) throw PolicyException("policy.min_prompt_accuracy ${config.minPromptAccuracy}: no table row reaches it")
    }
    val referenceMs: Double = config.referenceLatencyMs ?: eligible.map { it.latencyMs }.max()!!
    private val ranked = eligible.sortedWith(QUALITY_ORDER)
    val cheapest: Row = eligible.sortedWith(compareBy<Row> { it.latencyMs }.then(QUALITY_ORDER)).first()
    var current: Row? = null
        private set
    private var lastT: Double? = null
    private var pendingSince: Double? = null
    private var windowBudget = Double.POSITIVE_INFINITY

    companion object {
        /** The policy a bundle ships; refuses table rows naming a width or step count the bundle lacks. */
        fun fromManifest(manifest: Map<String, Any?>): Policy {
            val p = manifest["policy"] as? Map<*, *>
            if (p == null || p.isEmpty()) throw PolicyException("manifest: no 'policy' parameters")
            val t = manifest["table"] as? List<*>
            if (t == null || t.isEmpty()) throw PolicyException("manifest: no measured 'table' rows")
            val rows = parseTable(t, "manifest: table")
            val widths = (manifest["widths"] as? List<*>)?.map { (it as? Double) ?: (it as String).toDouble() }?.toSet() ?: emptySet()
            val sampling = manifest["sampling"] as? Map<*, *>
            val schedules = (sampling?.get("schedules") as? Map<*, *>)?.keys?.map { (it as String).toInt() }?.toSet() ?: emptySet()
            rows.forEachIndexed { i, r ->
                if (widths.isNotEmpty() && r.width !in widths) throw PolicyException("manifest: table[$i] names width ${r.width}, which the bundle lacks")
                if (schedules.isNotEmpty() && r.steps !in schedules) throw PolicyException("manifest: table[$i] names ${r.steps} steps, which the bundle has no schedule for")
            }
            return Policy(PolicyConfig.fromMap(p, "manifest: policy"), rows)
        }
    }

    fun budgetMs(state: DeviceState): Pair<Double, String> {
        var thermal = state.thermal
        val headroom = state.headroom
        if (headroom != null) {
            for (level in THERMAL_STATES.drop(1)) {
                val limit = config.headroomThresholds[level]
                if (limit != null && headroom >= limit && THERMAL_STATES.indexOf(level) > THERMAL_STATES.indexOf(thermal)) thermal = level
            }
        }
        var factor = config.thermalBudget.getValue(thermal)
        val why = mutableListOf("thermal $thermal")
        if (!state.charging) {
            val tiers = config.batteryTiers.filter { state.batteryLevel < it.below }.map { it.factor }
            if (tiers.isNotEmpty()) {
                factor *= tiers.min()!!
                why.add("battery ${Math.round(state.batteryLevel * 100)}%")
            }
        } else why.add("charging")
        if (state.lowPower) {
            factor *= config.lowPowerFactor
            why.add("low-power mode")
        }
        return Pair(referenceMs * factor, why.joinToString(", "))
    }

    fun bestFitting(budget: Double): Row? = ranked.firstOrNull { it.latencyMs <= budget }

    private fun better(a: Row, b: Row) = QUALITY_ORDER.compare(a, b) < 0

    fun decide(t: Double, state: DeviceState): Decision {
        val last = lastT
        if (last != null && t < last) throw PolicyException("t: samples must come in time order ($t after $last)")
        lastT = t
        val (budget, why) = budgetMs(state)
        val best = bestFitting(budget)
        val target = best ?: cheapest
        val cur = current
        val reason: String
        val chosen: Row
        if (cur == null) {
            reason = "initial"; chosen = target; pendingSince = null
        } else if (cur.latencyMs > budget && target != cur) {
            reason = "step_down"; chosen = target; pendingSince = null
        } else if (best != null && better(best, cur)) {
            val since = pendingSince
            if (since == null) {
                pendingSince = t; windowBudget = budget
            } else windowBudget = Math.min(windowBudget, budget)
            val candidate = bestFitting(windowBudget)
            if (t - pendingSince!! >= config.dwellS && candidate != null && better(candidate, cur)) {
                reason = "step_up"; chosen = candidate; pendingSince = null
            } else {
                reason = "dwell"; chosen = cur
            }
        } else {
            reason = "hold"; chosen = cur; pendingSince = null
        }
        current = chosen
        val over = chosen.latencyMs > budget
        val detail = "$why: budget ${String.format("%.1f", budget)} ms" + if (over) "; no row fits, cheapest taken" else ""
        return Decision(t, chosen.steps, chosen.width, chosen.latencyMs, budget, reason, over, detail)
    }

    /** What a device does with a state it cannot read: the cheapest row and a logged warning. */
    fun decideOrFallback(t: Double, state: Any?, warn: (String) -> Unit = { System.err.println(it) }): Decision {
        return try {
            decide(t, DeviceState.fromMap(state))
        } catch (e: PolicyException) {
            warn("policy fallback to the cheapest row: ${e.message}")
            current = cheapest
            pendingSince = null
            Decision(t, cheapest.steps, cheapest.width, cheapest.latencyMs, 0.0, "fallback", false, "unreadable state: ${e.message}")
        }
    }
}

/**
 * What a device runs when the bundle's table or policy is unusable: the narrowest width and the fewest
 * steps the bundle has (never a row it lacks). The caller logs the warning.
 */
fun fallbackDecision(manifest: Map<String, Any?>, why: String, t: Double = 0.0): Decision {
    val widths = ((manifest["widths"] as? List<*>) ?: ((manifest["components"] as? Map<*, *>)?.get("unet") as? Map<*, *>)
        ?.let { (it["widths"] as? Map<*, *>)?.keys?.toList() } ?: emptyList<Any?>())
        .map { (it as? Double) ?: (it as String).toDouble() }
    val steps = ((manifest["sampling"] as? Map<*, *>)?.get("schedules") as? Map<*, *>)?.keys?.map { (it as String).toInt() } ?: emptyList()
    if (widths.isEmpty() || steps.isEmpty()) throw PolicyException("manifest: no widths or schedules to fall back to ($why)")
    return Decision(t, steps.min()!!, widths.min()!!, 0.0, 0.0, "fallback", false, "no usable policy: $why")
}
