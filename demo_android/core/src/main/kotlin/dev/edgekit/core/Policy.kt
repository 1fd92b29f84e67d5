package dev.edgekit.core

/**
 * Runtime policy twin of edgekit/policy.py: device state -> (steps, width, cache interval) from the manifest's measured
 * table, with hysteresis. Same rule, same parameters (manifest "policy"), same vectors
 * (edgekit/twin_vectors/policy.json). Pure Kotlin: the Android glue feeds it PowerManager and
 * BatteryManager readings, and the times of its own first runs (latencyRatio, Policy.rescaled).
 *
 * The rule: among the rows that fit the budget, best = the highest quality.value (ties: the cheaper);
 * candidates = rows with best.value - r.value <= sqrt(half(best)^2 + half(r)^2), half = (ci95[1] - ci95[0]) / 2;
 * choice = the cheapest candidate (latency, then higher value, wider, fewer steps). A cheaper choice (or a
 * current row that no longer fits) is taken at once; a choice costing at least as much only after dwellS.
 */
class PolicyException(message: String) : RuntimeException(message)

const val POLICY_FORMAT = "edgekit-policy/2"
val THERMAL_STATES = listOf("nominal", "fair", "serious", "critical")
private val POLICY_KEYS = listOf("format", "thermal_budget", "battery_tiers", "low_power_factor",
    "headroom_thresholds", "dwell_s", "reference_latency_ms", "min_quality")
private const val OLD_ROW_HINT = "re-run `edgekit bench BUNDLE` to measure rows with a quality value and interval"
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
    val minQuality: Double? = null
) {
    companion object {
        fun fromMap(data: Any?, where: String = "policy"): PolicyConfig {
            val m = asMap(data, where)
            if (m.isEmpty()) throw PolicyException("$where: expected a non-empty policy object")
            if ("min_prompt_accuracy" in m) {
                throw PolicyException("$where.min_prompt_accuracy: replaced by 'min_quality' (a floor on the table's " +
                    "quality.value, null for none); re-run `edgekit bench BUNDLE`")
            }
            unknownKeys(m, POLICY_KEYS, where)
            val format = m["format"] ?: POLICY_FORMAT
            if (format != POLICY_FORMAT) {
                throw PolicyException("$where.format: expected '$POLICY_FORMAT', got $format (re-run `edgekit bench BUNDLE`)")
            }
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
            val floor = m["min_quality"]
            return PolicyConfig(
                thermal, tiers,
                num(m["low_power_factor"] ?: 0.5, "$where.low_power_factor", 0.0, 1.0, true),
                headroom,
                num(m["dwell_s"] ?: 10.0, "$where.dwell_s", 0.0),
                if (ref == null) null else num(ref, "$where.reference_latency_ms", 0.0, null, true),
                if (floor == null) null else num(floor, "$where.min_quality")
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
    val quality: Double,
    val qualityLow: Double,
    val qualityHigh: Double,
    val metric: String = "",
    val device: String = "",
    // step-cache interval (the manifest's sampling.step_cache; 1 = the plain loop; a row without "cache" is 1)
    val cache: Int = 1
) {
    val halfInterval: Double get() = (qualityHigh - qualityLow) / 2.0
    fun sameRow(o: Row) = width == o.width && steps == o.steps && cache == o.cache
}

/** Smaller is cheaper: latency, then (at equal latency) the better, the wider, the fewer steps, the smaller interval. */
val COST_ORDER: Comparator<Row> = compareBy<Row>({ it.latencyMs }, { -it.quality }, { -it.width }, { it.steps }, { it.cache })
/** Smaller is better: the highest quality value, ties to the cheaper row. */
val BEST_ORDER: Comparator<Row> = compareBy<Row> { -it.quality }.then(COST_ORDER)

fun notSignificantlyWorse(row: Row, best: Row): Boolean {
    val hb = best.halfInterval
    val hr = row.halfInterval
    return best.quality - row.quality <= Math.sqrt(hb * hb + hr * hr)
}

/** The rule's row for a budget (null when none fits). */
fun choose(rows: List<Row>, budgetMs: Double): Row? {
    val fitting = rows.filter { it.latencyMs <= budgetMs }
    if (fitting.isEmpty()) return null
    val best = fitting.sortedWith(BEST_ORDER).first()
    return fitting.filter { notSignificantlyWorse(it, best) }.sortedWith(COST_ORDER).first()
}

private fun interval(v: Any?, where: String): Pair<Double, Double> {
    val list = v as? List<*>
    if (list == null || list.size != 2) throw PolicyException("$where: expected [low, high], got $v")
    val low = num(list[0], "$where[0]")
    val high = num(list[1], "$where[1]")
    if (low > high) throw PolicyException("$where: low $low is above high $high")
    return Pair(low, high)
}

fun parseTable(rows: Any?, where: String = "table"): List<Row> {
    val list = rows as? List<*> ?: throw PolicyException("$where: expected a non-empty list of measured rows")
    if (list.isEmpty()) throw PolicyException("$where: expected a non-empty list of measured rows")
    val seen = HashSet<Triple<Double, Int, Int>>()
    return list.mapIndexed { i, r ->
        val w = "$where[$i]"
        val m = asMap(r, w)
        if ("quality" !in m && "prompt_accuracy" in m) {
            throw PolicyException("$w: a row of the old format (prompt_accuracy, no 'quality'); $OLD_ROW_HINT")
        }
        for (k in listOf("width", "steps", "latency_ms", "quality")) if (k !in m) throw PolicyException("$w: missing '$k'")
        val steps = num(m["steps"], "$w.steps", 1.0)
        if (steps != Math.floor(steps)) throw PolicyException("$w.steps: expected a positive whole number")
        val q = m["quality"] as? Map<*, *>
        if (q == null || "value" !in q || "ci95" !in q) {
            throw PolicyException("$w.quality: expected an object with 'value' and 'ci95' [low, high]; $OLD_ROW_HINT")
        }
        val cache = if ("cache" in m) m["cache"] else 1.0
        if (cache !is Double || cache != Math.floor(cache) || cache < 1.0 || cache > steps) {
            throw PolicyException("$w.cache: expected a step-cache interval, a whole number from 1 to the row's ${steps.toInt()} steps, got $cache")
        }
        val ci = interval(q["ci95"], "$w.quality.ci95")
        val row = Row(num(m["width"], "$w.width", 0.0, 1.0, true), steps.toInt(),
            num(m["latency_ms"], "$w.latency_ms", 0.0, null, true), num(q["value"], "$w.quality.value"),
            ci.first, ci.second, q["metric"] as? String ?: "", m["device"] as? String ?: "", cache.toInt())
        if (!seen.add(Triple(row.width, row.steps, row.cache))) {
            throw PolicyException("$w: a second row for width ${row.width} and ${row.steps} steps" +
                if (row.cache != 1) " at cache interval ${row.cache}" else "")
        }
        row
    }
}

/** One generation this device timed: the row it ran and how long it took, end to end. */
data class LatencyRun(val width: Double, val steps: Int, val measuredMs: Double, val cache: Int = 1) {
    companion object {
        fun fromMap(data: Any?, where: String = "latency run"): LatencyRun {
            val m = asMap(data, where)
            for (k in listOf("width", "steps", "measured_ms")) if (k !in m) {
                throw PolicyException("$where: expected an object with width, steps, measured_ms")
            }
            return LatencyRun(num(m["width"], "$where.width"), num(m["steps"], "$where.steps").toInt(),
                num(m["measured_ms"], "$where.measured_ms"), if ("cache" in m) num(m["cache"], "$where.cache", 1.0).toInt() else 1)
        }
    }
}

/** This device's measured / table latency: the median over timed runs of measuredMs / the row's latencyMs. */
fun latencyRatio(runs: List<LatencyRun>, rows: List<Row>): Double {
    if (runs.isEmpty()) throw PolicyException("latency runs: expected at least one timed run {width, steps, measured_ms}")
    val ratios = runs.mapIndexed { i, run ->
        val w = "latency runs[$i]"
        val measured = num(run.measuredMs, "$w.measured_ms", 0.0, null, true)
        val row = rows.firstOrNull { it.width == run.width && it.steps == run.steps && it.cache == run.cache }
            ?: throw PolicyException("$w: width ${run.width} and ${run.steps} steps" +
                (if (run.cache != 1) " at cache interval ${run.cache}" else "") + " is not a row of the table")
        measured / row.latencyMs
    }.sorted()
    val mid = ratios.size / 2
    return if (ratios.size % 2 == 1) ratios[mid] else (ratios[mid - 1] + ratios[mid]) / 2.0
}

/** Every row's latency multiplied by ratio (a device's measured / table latency). */
fun rescaleTable(rows: List<Row>, ratio: Double): List<Row> {
    num(ratio, "latency ratio", 0.0, null, true)
    return rows.map { it.copy(latencyMs = it.latencyMs * ratio) }
}

data class Decision(
    val t: Double,
    val steps: Int,
    val width: Double,
    val latencyMs: Double,
    val budgetMs: Double,
    val reason: String,
    val overBudget: Boolean,
    val detail: String,
    val quality: Double? = null,
    val cache: Int = 1  // the step-cache interval the loop runs at (CachePlan.forInterval; 1 = plain)
)

/** tableRows: parseTable's rows as measured; latencyRatio rescales them (1 = the table as measured). */
class Policy(val config: PolicyConfig, val tableRows: List<Row>, val latencyRatio: Double = 1.0) {
    init {
        num(latencyRatio, "latency ratio", 0.0, null, true)
    }

    val rows: List<Row> = if (latencyRatio == 1.0) tableRows else rescaleTable(tableRows, latencyRatio)
    // Rows below the quality floor are never chosen (e.g. a slimmed width not yet recovered).
    val eligible: List<Row> = rows.filter { r -> config.minQuality.let { it == null || r.quality >= it } }.also {
        if (it.isEmpty()) throw PolicyException("policy.min_quality ${config.minQuality}: no table row reaches it")
    }
    val referenceMs: Double = config.referenceLatencyMs ?: eligible.map { it.latencyMs }.max()!!
    val cheapest: Row = eligible.sortedWith(COST_ORDER).first()
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
            val plans = ((sampling?.get("step_cache") as? Map<*, *>)?.get("plans") as? Map<*, *>) ?: emptyMap<Any, Any>()
            rows.forEachIndexed { i, r ->
                if (r.cache != 1 && (plans[r.cache.toString()] as? Map<*, *>)?.containsKey(r.steps.toString()) != true) {
                    throw PolicyException("manifest: table[$i] names cache interval ${r.cache} at ${r.steps} steps, which the bundle has no step-cache plan for (sampling.step_cache)")
                }
                if (widths.isNotEmpty() && r.width !in widths) throw PolicyException("manifest: table[$i] names width ${r.width}, which the bundle lacks")
                if (schedules.isNotEmpty() && r.steps !in schedules) throw PolicyException("manifest: table[$i] names ${r.steps} steps, which the bundle has no schedule for")
            }
            return Policy(PolicyConfig.fromMap(p, "manifest: policy"), rows)
        }
    }

    /**
     * This policy over the table rescaled by ratio (relative to the table as measured), keeping the
     * current row and the clock; a pending step up starts over.
     */
    fun rescaled(ratio: Double): Policy {
        val other = Policy(config, tableRows, ratio)
        val cur = current
        if (cur != null) other.current = other.eligible.first { it.sameRow(cur) }
        other.lastT = lastT
        return other
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

    fun choose(budget: Double): Row? = choose(eligible, budget)

    fun decide(t: Double, state: DeviceState): Decision {
        val last = lastT
        if (last != null && t < last) throw PolicyException("t: samples must come in time order ($t after $last)")
        lastT = t
        val (budget, why) = budgetMs(state)
        val target = choose(budget) ?: cheapest
        val cur = current
        val reason: String
        val chosen: Row
        if (cur == null) {
            reason = "initial"; chosen = target; pendingSince = null
        } else if (target.sameRow(cur)) {
            reason = "hold"; chosen = cur; pendingSince = null
        } else if (target.latencyMs < cur.latencyMs || cur.latencyMs > budget) {
            reason = "step_down"; chosen = target; pendingSince = null
        } else {
            // the rule now chooses a row costing at least as much, and the current row fits: dwell first
            val since = pendingSince
            if (since == null) {
                pendingSince = t; windowBudget = budget
            } else windowBudget = Math.min(windowBudget, budget)
            val up = choose(windowBudget)
            if (t - pendingSince!! >= config.dwellS && up != null && !up.sameRow(cur) && up.latencyMs >= cur.latencyMs) {
                reason = "step_up"; chosen = up; pendingSince = null
            } else {
                reason = "dwell"; chosen = cur
            }
        }
        current = chosen
        val over = chosen.latencyMs > budget
        val detail = "$why: budget ${String.format("%.1f", budget)} ms" + if (over) "; no row fits, cheapest taken" else ""
        return Decision(t, chosen.steps, chosen.width, chosen.latencyMs, budget, reason, over, detail, chosen.quality,
            chosen.cache)
    }

    /** What a device does with a state it cannot read: the cheapest row and a logged warning. */
    fun decideOrFallback(t: Double, state: Any?, warn: (String) -> Unit = { System.err.println(it) }): Decision {
        return try {
            decide(t, DeviceState.fromMap(state))
        } catch (e: PolicyException) {
            warn("policy fallback to the cheapest row: ${e.message}")
            current = cheapest
            pendingSince = null
            Decision(t, cheapest.steps, cheapest.width, cheapest.latencyMs, 0.0, "fallback", false,
                "unreadable state: ${e.message}", cheapest.quality, cheapest.cache)
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
