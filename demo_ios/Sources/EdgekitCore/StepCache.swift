// Step caching (edgekit/step_cache.py, DeepCache) on the device: the manifest's sampling.step_cache says, per
// offered interval and step count, which graph each UNet call of that step count's schedule table runs (a table
// may make more calls than steps: SD-1.5's PNDM makes steps + 1) ("full": the UNet graph that also outputs the
// feature entering its last up block, joined after the noise channels; "shallow": the small graph fed that
// feature). This core only follows that data. Same vectors as Python and Kotlin (twin_vectors/step_cache.json).
import Foundation

public struct StepCacheError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public enum StepCache {
    public static let full = "full"
    public static let shallow = "shallow"

    /// The plan for `interval` at `steps` steps from the manifest's "sampling" (nil for 1: the plain loop): one
    /// role per UNet call of the `steps`-step schedule table.
    public static func plan(_ sampling: [String: Any], interval: Int, steps: Int) throws -> [String]? {
        guard interval >= 1 else { throw StepCacheError(message: "cache \(interval): expected a whole number >= 1 (1 = no step caching)") }
        if interval == 1 { return nil }
        let plans = (sampling["step_cache"] as? [String: Any])?["plans"] as? [String: Any]
        guard let bySteps = plans?["\(interval)"] as? [String: Any] else {
            throw StepCacheError(message: "cache \(interval): the bundle offers no step-cache plan at this interval "
                                 + "(offers: \((["1"] + (plans?.keys.sorted() ?? [])).joined(separator: ", ")))")
        }
        guard let plan = bySteps["\(steps)"] as? [String] else {
            throw StepCacheError(message: "cache \(interval): the bundle has no \(steps)-step plan at this interval")
        }
        guard let table = (sampling["schedules"] as? [String: Any])?["\(steps)"] as? [String: Any],
              let timesteps = table["timesteps"] as? [Any] else {
            throw StepCacheError(message: "cache \(interval): the bundle has no schedule for \(steps) steps")
        }
        let calls = timesteps.count
        guard plan.count == calls, plan.first == full, plan.allSatisfy({ $0 == full || $0 == shallow }) else {
            throw StepCacheError(message: "sampling.step_cache.plans.\(interval).\(steps): expected \(calls) of full/shallow "
                                 + "(one per UNet call of the \(steps)-step schedule table), the first full")
        }
        return plan
    }

    /// The graphs a plan's roles name (manifest component keys), and where the full graph's output splits.
    public static func graphs(_ sampling: [String: Any]) throws -> (full: String, shallow: String, noiseChannels: Int) {
        guard let section = sampling["step_cache"] as? [String: Any], let graphs = section["graphs"] as? [String: String],
              let out = section["full_output"] as? [String: Any], let nc = out["noise_channels"] as? NSNumber,
              let f = graphs[full], let s = graphs[shallow] else {
            throw StepCacheError(message: "sampling.step_cache: expected graphs {full, shallow} and full_output.noise_channels")
        }
        return (f, s, nc.intValue)
    }
}

/// The UNet call `step` of the table runs the graph `plan[step]` names (nil: `plain` every call); a call past the
/// plan is an error. Inputs and outputs hold `rows` rows in NCHW order, `pixels` pixels per channel; `full` returns
/// the noise channels then the feature channels, split at `noiseChannels`; the feature rows are kept for the
/// shallow calls after it.
public final class CachedUNet {
    let plan: [String]?
    let noiseChannels: Int
    let pixels: Int
    let plain: ([Double], Double) throws -> [Double]
    let full: ([Double], Double) throws -> [Double]
    let shallow: ([Double], Double, [Double]) throws -> [Double]
    private var feature: [Double]?

    public init(plan: [String]?, noiseChannels: Int, pixels: Int, plain: @escaping ([Double], Double) throws -> [Double],
                full: @escaping ([Double], Double) throws -> [Double],
                shallow: @escaping ([Double], Double, [Double]) throws -> [Double]) {
        self.plan = plan; self.noiseChannels = noiseChannels; self.pixels = pixels
        self.plain = plain; self.full = full; self.shallow = shallow
    }

    public func call(step: Int, x: [Double], t: Double, rows: Int) throws -> [Double] {
        guard let plan = plan else { return try plain(x, t) }
        guard step < plan.count else {
            throw StepCacheError(message: "step \(step): past the plan's \(plan.count) UNet calls")
        }
        if plan[step] == StepCache.shallow {
            guard let f = feature else { throw StepCacheError(message: "step \(step): a shallow step before any full step") }
            return try shallow(x, t, f)
        }
        let out = try full(x, t)
        let per = out.count / rows, eps = noiseChannels * pixels
        var noise: [Double] = [], kept: [Double] = []
        for r in 0..<rows {
            noise += out[(r * per)..<(r * per + eps)]
            kept += out[(r * per + eps)..<((r + 1) * per)]
        }
        feature = kept
        return noise
    }
}
