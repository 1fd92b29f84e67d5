// Runtime policy twin of edgekit/policy.py: device state -> (steps, width) from the manifest's measured
// table, with hysteresis. Same rule, same parameters (manifest "policy"), same vectors
// (edgekit/twin_vectors/policy.json). No UIKit here: the app feeds it ProcessInfo and UIDevice readings,
// and the times of its own first runs (latencyRatio, Policy.rescaled).
//
// The rule: among the rows that fit the budget, best = the highest quality.value (ties: the cheaper);
// candidates = rows with best.value - r.value <= sqrt(half(best)^2 + half(r)^2), half = (ci95[1] - ci95[0]) / 2;
// choice = the cheapest candidate (latency, then higher value, wider, fewer steps). A cheaper choice (or a
// current row that no longer fits) is taken at once; a choice costing at least as much only after dwellS.
import Foundation

public struct PolicyError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public let policyFormat = "edgekit-policy/2"
public let thermalStates = ["nominal", "fair", "serious", "critical"]
private let policyKeys = ["format", "thermal_budget", "battery_tiers", "low_power_factor", "headroom_thresholds",
                          "dwell_s", "reference_latency_ms", "min_quality"]
private let oldRowHint = "re-run `edgekit bench BUNDLE` to measure rows with a quality value and interval"

/// A JSON null (NSNull from JSONSerialization) or a missing key.
func isNull(_ v: Any?) -> Bool { v == nil || v is NSNull }
private let stateKeys = ["battery_level", "charging", "low_power", "thermal", "headroom", "t"]

/// JSONSerialization turns true/false into NSNumber; tell them apart from numbers.
func isBool(_ v: Any?) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return CFGetTypeID(n) == CFBooleanGetTypeID()
}

func number(_ v: Any?, _ where_: String, low: Double? = nil, high: Double? = nil, lowOpen: Bool = false) throws -> Double {
    guard !isBool(v), let n = v as? NSNumber, n.doubleValue.isFinite else {
        throw PolicyError(message: "\(where_): expected a number, got \(String(describing: v))")
    }
    let x = n.doubleValue
    if let low = low, x < low || (lowOpen && x == low) {
        throw PolicyError(message: "\(where_): expected a number \(lowOpen ? ">" : ">=") \(low), got \(x)")
    }
    if let high = high, x > high { throw PolicyError(message: "\(where_): expected a number <= \(high), got \(x)") }
    return x
}

private func unknownKeys(_ m: [String: Any], _ allowed: [String], _ where_: String) throws {
    for k in m.keys.sorted() where !allowed.contains(k) {
        throw PolicyError(message: "\(where_): unknown key '\(k)' (expected one of \(allowed.joined(separator: ", ")))")
    }
}

public struct BatteryTier: Equatable { public let below: Double; public let factor: Double }

public struct PolicyConfig: Equatable {
    public let thermalBudget: [String: Double]
    public let batteryTiers: [BatteryTier]
    public let lowPowerFactor: Double
    public let headroomThresholds: [String: Double]
    public let dwellS: Double
    public let referenceLatencyMs: Double?
    public let minQuality: Double?

    public static func from(_ data: Any?, where where_: String = "policy") throws -> PolicyConfig {
        guard let m = data as? [String: Any], !m.isEmpty else { throw PolicyError(message: "\(where_): expected a non-empty policy object") }
        if m["min_prompt_accuracy"] != nil {
            throw PolicyError(message: "\(where_).min_prompt_accuracy: replaced by 'min_quality' (a floor on the table's "
                              + "quality.value, null for none); re-run `edgekit bench BUNDLE`")
        }
        try unknownKeys(m, policyKeys, where_)
        if !isNull(m["format"]) && (m["format"] as? String) != policyFormat {
            throw PolicyError(message: "\(where_).format: expected '\(policyFormat)', got \(m["format"]!) (re-run `edgekit bench BUNDLE`)")
        }
        guard let budget = m["thermal_budget"] as? [String: Any] else {
            throw PolicyError(message: "\(where_).thermal_budget: expected an object with a fraction per thermal state")
        }
        try unknownKeys(budget, thermalStates, "\(where_).thermal_budget")
        var thermal: [String: Double] = [:]
        for s in thermalStates {
            guard budget[s] != nil else { throw PolicyError(message: "\(where_).thermal_budget: missing \(s)") }
            thermal[s] = try number(budget[s], "\(where_).thermal_budget.\(s)", low: 0, lowOpen: true)
        }
        for k in 1..<thermalStates.count where thermal[thermalStates[k]]! > thermal[thermalStates[k - 1]]! {
            throw PolicyError(message: "\(where_).thermal_budget: '\(thermalStates[k])' must not exceed '\(thermalStates[k - 1])'")
        }
        guard let rawTiers = (m["battery_tiers"] ?? [Any]()) as? [Any] else {
            throw PolicyError(message: "\(where_).battery_tiers: expected a list")
        }
        let tiers: [BatteryTier] = try rawTiers.enumerated().map { i, t in
            let w = "\(where_).battery_tiers[\(i)]"
            guard let tm = t as? [String: Any] else { throw PolicyError(message: "\(w): expected an object") }
            try unknownKeys(tm, ["below", "factor"], w)
            return BatteryTier(below: try number(tm["below"], "\(w).below", low: 0, high: 1),
                               factor: try number(tm["factor"], "\(w).factor", low: 0, high: 1, lowOpen: true))
        }
        guard let heads = (m["headroom_thresholds"] ?? [String: Any]()) as? [String: Any] else {
            throw PolicyError(message: "\(where_).headroom_thresholds: expected an object")
        }
        try unknownKeys(heads, Array(thermalStates.dropFirst()), "\(where_).headroom_thresholds")
        var headroom: [String: Double] = [:]
        for (k, v) in heads { headroom[k] = try number(v, "\(where_).headroom_thresholds.\(k)", low: 0) }
        let ref = m["reference_latency_ms"]
        let floor = m["min_quality"]
        return PolicyConfig(
            thermalBudget: thermal, batteryTiers: tiers,
            lowPowerFactor: try number(m["low_power_factor"] ?? 0.5, "\(where_).low_power_factor", low: 0, high: 1, lowOpen: true),
            headroomThresholds: headroom,
            dwellS: try number(m["dwell_s"] ?? 10.0, "\(where_).dwell_s", low: 0),
            referenceLatencyMs: (ref == nil || ref is NSNull) ? nil : try number(ref, "\(where_).reference_latency_ms", low: 0, lowOpen: true),
            minQuality: isNull(floor) ? nil : try number(floor, "\(where_).min_quality"))
    }
}

public struct DeviceState: Equatable {
    public let batteryLevel: Double
    public let charging: Bool
    public let lowPower: Bool
    public let thermal: String
    public let headroom: Double?

    public init(batteryLevel: Double, charging: Bool, lowPower: Bool, thermal: String, headroom: Double? = nil) {
        self.batteryLevel = batteryLevel; self.charging = charging; self.lowPower = lowPower
        self.thermal = thermal; self.headroom = headroom
    }

    public static func from(_ data: Any?, where where_: String = "state") throws -> DeviceState {
        guard let m = data as? [String: Any] else { throw PolicyError(message: "\(where_): expected an object") }
        try unknownKeys(m, stateKeys, where_)
        for k in ["battery_level", "charging", "low_power", "thermal"] where m[k] == nil {
            throw PolicyError(message: "\(where_): missing '\(k)'")
        }
        guard let thermal = m["thermal"] as? String, thermalStates.contains(thermal) else {
            throw PolicyError(message: "\(where_).thermal: unknown thermal state \(String(describing: m["thermal"]!))")
        }
        guard isBool(m["charging"]), let charging = m["charging"] as? Bool else { throw PolicyError(message: "\(where_).charging: expected true or false") }
        guard isBool(m["low_power"]), let lowPower = m["low_power"] as? Bool else { throw PolicyError(message: "\(where_).low_power: expected true or false") }
        let h = m["headroom"]
        return DeviceState(batteryLevel: try number(m["battery_level"], "\(where_).battery_level (0..1)", low: 0, high: 1),
                           charging: charging, lowPower: lowPower, thermal: thermal,
                           headroom: (h == nil || h is NSNull) ? nil : try number(h, "\(where_).headroom", low: 0))
    }
}

public struct Row: Equatable {
    public let width: Double
    public let steps: Int
    public let latencyMs: Double
    public let quality: Double
    public let qualityLow: Double
    public let qualityHigh: Double
    public let metric: String
    public let device: String
    /// Step-cache interval (the manifest's sampling.step_cache; 1 = the plain loop; a row without "cache" is 1).
    public var cache: Int = 1

    public var halfInterval: Double { (qualityHigh - qualityLow) / 2 }
    func sameRow(_ o: Row) -> Bool { width == o.width && steps == o.steps && cache == o.cache }

    func withLatency(_ ms: Double) -> Row {
        Row(width: width, steps: steps, latencyMs: ms, quality: quality, qualityLow: qualityLow, qualityHigh: qualityHigh,
            metric: metric, device: device, cache: cache)
    }

    /// Smaller is cheaper: latency, then (at equal latency) the better, the wider, the fewer steps, the smaller interval.
    func isCheaper(than o: Row) -> Bool {
        let a = [latencyMs, -quality, -width, Double(steps), Double(cache)]
        let b = [o.latencyMs, -o.quality, -o.width, Double(o.steps), Double(o.cache)]
        for (x, y) in zip(a, b) where x != y { return x < y }
        return false
    }

    /// Smaller is better: the highest quality value, ties to the cheaper row.
    func isBetter(than o: Row) -> Bool { quality != o.quality ? quality > o.quality : isCheaper(than: o) }
}

public func notSignificantlyWorse(_ row: Row, than best: Row) -> Bool {
    let hb = best.halfInterval, hr = row.halfInterval
    return best.quality - row.quality <= (hb * hb + hr * hr).squareRoot()
}

/// The rule's row for a budget (nil when none fits).
public func choose(_ rows: [Row], budgetMs: Double) -> Row? {
    let fitting = rows.filter { $0.latencyMs <= budgetMs }
    guard let best = fitting.sorted(by: { $0.isBetter(than: $1) }).first else { return nil }
    return fitting.filter { notSignificantlyWorse($0, than: best) }.sorted(by: { $0.isCheaper(than: $1) }).first
}

private func interval(_ v: Any?, _ where_: String) throws -> (Double, Double) {
    guard let list = v as? [Any], list.count == 2 else {
        throw PolicyError(message: "\(where_): expected [low, high], got \(String(describing: v))")
    }
    let low = try number(list[0], "\(where_)[0]"), high = try number(list[1], "\(where_)[1]")
    guard low <= high else { throw PolicyError(message: "\(where_): low \(low) is above high \(high)") }
    return (low, high)
}

public func parseTable(_ rows: Any?, where where_: String = "table") throws -> [Row] {
    guard let list = rows as? [Any], !list.isEmpty else { throw PolicyError(message: "\(where_): expected a non-empty list of measured rows") }
    var seen = Set<String>()
    return try list.enumerated().map { i, r in
        let w = "\(where_)[\(i)]"
        guard let m = r as? [String: Any] else { throw PolicyError(message: "\(w): expected an object") }
        if m["quality"] == nil && m["prompt_accuracy"] != nil {
            throw PolicyError(message: "\(w): a row of the old format (prompt_accuracy, no 'quality'); \(oldRowHint)")
        }
        for k in ["width", "steps", "latency_ms", "quality"] where m[k] == nil { throw PolicyError(message: "\(w): missing '\(k)'") }
        let steps = try number(m["steps"], "\(w).steps", low: 1)
        guard steps == steps.rounded() else { throw PolicyError(message: "\(w).steps: expected a positive whole number") }
        guard let q = m["quality"] as? [String: Any], q["value"] != nil, q["ci95"] != nil else {
            throw PolicyError(message: "\(w).quality: expected an object with 'value' and 'ci95' [low, high]; \(oldRowHint)")
        }
        var cache = 1.0
        if m["cache"] != nil {
            let c = try number(m["cache"], "\(w).cache")
            guard c == c.rounded(), c >= 1, c <= steps else {
                throw PolicyError(message: "\(w).cache: expected a step-cache interval, a whole number from 1 to the row's \(Int(steps)) steps, got \(c)")
            }
            cache = c
        }
        let ci = try interval(q["ci95"], "\(w).quality.ci95")
        let row = Row(width: try number(m["width"], "\(w).width", low: 0, high: 1, lowOpen: true), steps: Int(steps),
                      latencyMs: try number(m["latency_ms"], "\(w).latency_ms", low: 0, lowOpen: true),
                      quality: try number(q["value"], "\(w).quality.value"), qualityLow: ci.0, qualityHigh: ci.1,
                      metric: (q["metric"] as? String) ?? "", device: (m["device"] as? String) ?? "", cache: Int(cache))
        guard seen.insert("\(row.width)/\(row.steps)/\(row.cache)").inserted else {
            throw PolicyError(message: "\(w): a second row for width \(row.width) and \(row.steps) steps"
                              + (row.cache != 1 ? " at cache interval \(row.cache)" : ""))
        }
        return row
    }
}

/// One generation this device timed: the row it ran and how long it took, end to end.
public struct LatencyRun: Equatable {
    public let width: Double
    public let steps: Int
    public let measuredMs: Double
    public let cache: Int

    public init(width: Double, steps: Int, measuredMs: Double, cache: Int = 1) {
        self.width = width; self.steps = steps; self.measuredMs = measuredMs; self.cache = cache
    }

    public static func from(_ data: Any?, where where_: String = "latency run") throws -> LatencyRun {
        guard let m = data as? [String: Any], m["width"] != nil, m["steps"] != nil, m["measured_ms"] != nil else {
            throw PolicyError(message: "\(where_): expected an object with width, steps, measured_ms")
        }
        return LatencyRun(width: try number(m["width"], "\(where_).width"), steps: Int(try number(m["steps"], "\(where_).steps")),
                          measuredMs: try number(m["measured_ms"], "\(where_).measured_ms"),
                          cache: m["cache"] == nil ? 1 : Int(try number(m["cache"], "\(where_).cache", low: 1)))
    }
}

/// This device's measured / table latency: the median over timed runs of measuredMs / the row's latencyMs.
public func latencyRatio(_ runs: [LatencyRun], rows: [Row]) throws -> Double {
    guard !runs.isEmpty else { throw PolicyError(message: "latency runs: expected at least one timed run {width, steps, measured_ms}") }
    let ratios = try runs.enumerated().map { i, run -> Double in
        let w = "latency runs[\(i)]"
        let measured = try number(run.measuredMs, "\(w).measured_ms", low: 0, lowOpen: true)
        guard let row = rows.first(where: { $0.width == run.width && $0.steps == run.steps && $0.cache == run.cache }) else {
            throw PolicyError(message: "\(w): width \(run.width) and \(run.steps) steps"
                              + (run.cache != 1 ? " at cache interval \(run.cache)" : "") + " is not a row of the table")
        }
        return measured / row.latencyMs
    }.sorted()
    let mid = ratios.count / 2
    return ratios.count % 2 == 1 ? ratios[mid] : (ratios[mid - 1] + ratios[mid]) / 2
}

/// Every row's latency multiplied by ratio (a device's measured / table latency).
public func rescaleTable(_ rows: [Row], ratio: Double) throws -> [Row] {
    _ = try number(ratio, "latency ratio", low: 0, lowOpen: true)
    return rows.map { $0.withLatency($0.latencyMs * ratio) }
}

public struct Decision {
    public let t: Double
    public let steps: Int
    public let width: Double
    public let latencyMs: Double
    public let budgetMs: Double
    public let reason: String
    public let overBudget: Bool
    public let detail: String
    public let quality: Double?
    /// The step-cache interval the loop runs at (StepCache.plan; 1 = the plain loop).
    public var cache: Int = 1
}

public final class Policy {
    public let config: PolicyConfig
    /// The table as measured; `rows` is it rescaled by `latencyRatio`.
    public let tableRows: [Row]
    public let latencyRatio: Double
    public let rows: [Row]
    public let eligible: [Row]
    public let referenceMs: Double
    public let cheapest: Row
    public private(set) var current: Row?
    private var lastT: Double?
    private var pendingSince: Double?
    private var windowBudget = Double.infinity

    public init(config: PolicyConfig, rows tableRows: [Row], latencyRatio: Double = 1) throws {
        self.config = config
        self.tableRows = tableRows
        self.latencyRatio = try number(latencyRatio, "latency ratio", low: 0, lowOpen: true)
        let rows = latencyRatio == 1 ? tableRows : try rescaleTable(tableRows, ratio: latencyRatio)
        self.rows = rows
        // Rows below the quality floor are never chosen (e.g. a slimmed width not yet recovered).
        let eligible = rows.filter { row in config.minQuality.map { row.quality >= $0 } ?? true }
        guard let cheapest = eligible.sorted(by: { $0.isCheaper(than: $1) }).first else {
            throw PolicyError(message: "policy.min_quality \(config.minQuality.map { "\($0)" } ?? "null"): no table row reaches it")
        }
        self.eligible = eligible
        self.cheapest = cheapest
        referenceMs = config.referenceLatencyMs ?? eligible.map { $0.latencyMs }.max()!
    }

    /// The policy a bundle ships; refuses table rows naming a width or step count the bundle lacks.
    public static func fromManifest(_ manifest: [String: Any]) throws -> Policy {
        guard let p = manifest["policy"] as? [String: Any], !p.isEmpty else { throw PolicyError(message: "manifest: no 'policy' parameters") }
        guard let t = manifest["table"] as? [Any], !t.isEmpty else { throw PolicyError(message: "manifest: no measured 'table' rows") }
        let rows = try parseTable(t, where: "manifest: table")
        let widths = Set(((manifest["widths"] as? [Any]) ?? []).compactMap { ($0 as? NSNumber)?.doubleValue ?? Double("\($0)") })
        let schedules = Set((((manifest["sampling"] as? [String: Any])?["schedules"] as? [String: Any]) ?? [:]).keys.compactMap { Int($0) })
        let plans = (((manifest["sampling"] as? [String: Any])?["step_cache"] as? [String: Any])?["plans"] as? [String: Any]) ?? [:]
        for (i, r) in rows.enumerated() {
            if r.cache != 1 && (plans["\(r.cache)"] as? [String: Any])?["\(r.steps)"] == nil {
                throw PolicyError(message: "manifest: table[\(i)] names cache interval \(r.cache) at \(r.steps) steps, which the bundle has no step-cache plan for (sampling.step_cache)")
            }
            if !widths.isEmpty && !widths.contains(r.width) { throw PolicyError(message: "manifest: table[\(i)] names width \(r.width), which the bundle lacks") }
            if !schedules.isEmpty && !schedules.contains(r.steps) { throw PolicyError(message: "manifest: table[\(i)] names \(r.steps) steps, which the bundle has no schedule for") }
        }
        return try Policy(config: try PolicyConfig.from(p, where: "manifest: policy"), rows: rows)
    }

    /// This policy over the table rescaled by `ratio` (relative to the table as measured), keeping the
    /// current row and the clock; a pending step up starts over.
    public func rescaled(_ ratio: Double) throws -> Policy {
        let other = try Policy(config: config, rows: tableRows, latencyRatio: ratio)
        if let cur = current { other.current = other.eligible.first { $0.sameRow(cur) } }
        other.lastT = lastT
        return other
    }

    public func budgetMs(_ state: DeviceState) -> (Double, String) {
        var thermal = state.thermal
        if let h = state.headroom {
            for level in thermalStates.dropFirst() {
                if let limit = config.headroomThresholds[level], h >= limit,
                   thermalStates.firstIndex(of: level)! > thermalStates.firstIndex(of: thermal)! { thermal = level }
            }
        }
        var factor = config.thermalBudget[thermal]!
        var why = ["thermal \(thermal)"]
        if !state.charging {
            let tiers = config.batteryTiers.filter { state.batteryLevel < $0.below }.map { $0.factor }
            if let f = tiers.min() { factor *= f; why.append("battery \(Int((state.batteryLevel * 100).rounded()))%") }
        } else { why.append("charging") }
        if state.lowPower { factor *= config.lowPowerFactor; why.append("low-power mode") }
        return (referenceMs * factor, why.joined(separator: ", "))
    }

    public func choose(_ budget: Double) -> Row? { EdgekitCore.choose(eligible, budgetMs: budget) }

    public func decide(t: Double, state: DeviceState) throws -> Decision {
        if let last = lastT, t < last { throw PolicyError(message: "t: samples must come in time order (\(t) after \(last))") }
        lastT = t
        let (budget, why) = budgetMs(state)
        let target = choose(budget) ?? cheapest
        var reason: String
        var chosen: Row
        if let cur = current {
            if target.sameRow(cur) {
                reason = "hold"; chosen = cur; pendingSince = nil
            } else if target.latencyMs < cur.latencyMs || cur.latencyMs > budget {
                reason = "step_down"; chosen = target; pendingSince = nil
            } else {
                // the rule now chooses a row costing at least as much, and the current row fits: dwell first
                if pendingSince == nil { pendingSince = t; windowBudget = budget } else { windowBudget = min(windowBudget, budget) }
                if t - pendingSince! >= config.dwellS, let up = choose(windowBudget), !up.sameRow(cur), up.latencyMs >= cur.latencyMs {
                    reason = "step_up"; chosen = up; pendingSince = nil
                } else { reason = "dwell"; chosen = cur }
            }
        } else { reason = "initial"; chosen = target; pendingSince = nil }
        current = chosen
        let over = chosen.latencyMs > budget
        let detail = "\(why): budget \(String(format: "%.1f", budget)) ms" + (over ? "; no row fits, cheapest taken" : "")
        return Decision(t: t, steps: chosen.steps, width: chosen.width, latencyMs: chosen.latencyMs, budgetMs: budget,
                        reason: reason, overBudget: over, detail: detail, quality: chosen.quality, cache: chosen.cache)
    }

    /// What a device does with a state it cannot read: the cheapest row and a logged warning.
    public func decideOrFallback(t: Double, state: Any?, warn: (String) -> Void = { print($0) }) -> Decision {
        do {
            return try decide(t: t, state: try DeviceState.from(state))
        } catch {
            warn("policy fallback to the cheapest row: \(error)")
            current = cheapest
            pendingSince = nil
            return Decision(t: t, steps: cheapest.steps, width: cheapest.width, latencyMs: cheapest.latencyMs, budgetMs: 0,
                            reason: "fallback", overBudget: false, detail: "unreadable state: \(error)", quality: cheapest.quality,
                            cache: cheapest.cache)
        }
    }
}

/// What a device runs when the bundle's table or policy is unusable: the narrowest width and the fewest
/// steps the bundle has (never a row it lacks). The caller logs the warning.
public func fallbackDecision(_ manifest: [String: Any], why: String, t: Double = 0) throws -> Decision {
    let rawWidths = (manifest["widths"] as? [Any]) ?? Array((((manifest["components"] as? [String: Any])?["unet"] as? [String: Any])?["widths"] as? [String: Any] ?? [:]).keys)
    let widths = rawWidths.compactMap { ($0 as? NSNumber)?.doubleValue ?? Double("\($0)") }
    let steps = (((manifest["sampling"] as? [String: Any])?["schedules"] as? [String: Any]) ?? [:]).keys.compactMap { Int($0) }
    guard let w = widths.min(), let s = steps.min() else {
        throw PolicyError(message: "manifest: no widths or schedules to fall back to (\(why))")
    }
    return Decision(t: t, steps: s, width: w, latencyMs: 0, budgetMs: 0, reason: "fallback", overBudget: false,
                    detail: "no usable policy: \(why)", quality: nil)
}
