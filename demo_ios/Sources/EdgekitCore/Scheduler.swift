// The device sampling loop over a manifest schedule table (edgekit/schedule.py): multiply-adds only,
//   modelInput = inputScale[i] * x;  x = sampleCoeff[i] * x + sum_j epsCoeffs[i][j] * eps_j
// so no diffusers scheduler is re-implemented on the phone. Checked by edgekit/twin_vectors/scheduler.json.
import Foundation

public struct ScheduleTable {
    public let timesteps: [Double]
    public let inputScale: [Double]
    public let sampleCoeff: [Double]
    public let epsCoeffs: [[Double]]
    public let initNoiseSigma: Double

    public static func from(_ m: [String: Any]) throws -> ScheduleTable {
        func doubles(_ k: String) throws -> [Double] {
            guard let a = m[k] as? [NSNumber] else { throw PolicyError(message: "schedule table: missing '\(k)'") }
            return a.map { $0.doubleValue }
        }
        guard let eps = m["eps_coeffs"] as? [[NSNumber]], let sigma = m["init_noise_sigma"] as? NSNumber else {
            throw PolicyError(message: "schedule table: missing 'eps_coeffs' or 'init_noise_sigma'")
        }
        return ScheduleTable(timesteps: try doubles("timesteps"), inputScale: try doubles("input_scale"),
                             sampleCoeff: try doubles("sample_coeff"), epsCoeffs: eps.map { $0.map { $0.doubleValue } },
                             initNoiseSigma: sigma.doubleValue)
    }
}

public func runTable(_ table: ScheduleTable, x0: [Double], model: ([Double], Double, Int) throws -> [Double],
                     onStep: ((Int, Int) -> Void)? = nil) rethrows -> [Double] {
    var x = x0.map { $0 * table.initNoiseSigma }
    var history: [[Double]] = []
    for i in 0..<table.timesteps.count {
        let scale = table.inputScale[i]
        history.append(try model(x.map { $0 * scale }, table.timesteps[i], i))
        let a = table.sampleCoeff[i]
        var next = x.map { a * $0 }
        for (j, c) in table.epsCoeffs[i].enumerated() where c != 0 {
            let e = history[j]
            for k in 0..<next.count { next[k] += c * e[k] }
        }
        x = next
        onStep?(i + 1, table.timesteps.count)
    }
    return x
}

/// Classifier-free guidance: uncond + scale * (cond - uncond).
public func guide(_ uncond: [Double], _ cond: [Double], scale: Double) -> [Double] {
    zip(uncond, cond).map { u, c in u + scale * (c - u) }
}
