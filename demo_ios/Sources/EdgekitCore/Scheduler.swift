// The device sampling loop over a manifest schedule table (edgekit/schedule.py): multiply-adds only,
//   modelInput = inputScale[i] * x
//   x = sampleCoeff[i] * x + sum_j epsCoeffs[i][j] * eps_j + sum_j noiseCoeffs[i][j] * z_j
// so no diffusers scheduler is re-implemented on the phone; z_j is step j's noise from `Noise`.
// Checked by edgekit/twin_vectors/scheduler.json and noise.json.
import Foundation

public struct ScheduleTable {
    public let timesteps: [Double]
    public let inputScale: [Double]
    public let sampleCoeff: [Double]
    public let epsCoeffs: [[Double]]
    public let initNoiseSigma: Double
    public let noiseCoeffs: [[Double]]
    public let scheduler: String

    public static func from(_ m: [String: Any]) throws -> ScheduleTable {
        func doubles(_ k: String) throws -> [Double] {
            guard let a = m[k] as? [NSNumber] else { throw PolicyError(message: "schedule table: missing '\(k)'") }
            return a.map { $0.doubleValue }
        }
        guard let eps = m["eps_coeffs"] as? [[NSNumber]], let sigma = m["init_noise_sigma"] as? NSNumber else {
            throw PolicyError(message: "schedule table: missing 'eps_coeffs' or 'init_noise_sigma'")
        }
        let timesteps = try doubles("timesteps")
        let noise = (m["noise_coeffs"] as? [[NSNumber]])?.map { $0.map { $0.doubleValue } }
            ?? [[Double]](repeating: [], count: timesteps.count)
        return ScheduleTable(timesteps: timesteps, inputScale: try doubles("input_scale"),
                             sampleCoeff: try doubles("sample_coeff"), epsCoeffs: eps.map { $0.map { $0.doubleValue } },
                             initNoiseSigma: sigma.doubleValue, noiseCoeffs: noise,
                             scheduler: (m["scheduler"] as? String) ?? "")
    }
}

/// `noise(j)`: step j's standard normal noise, e.g. `{ j in Noise.normals(seed: seed, stream: UInt32(j + 1), count: n) }`
/// (needed by stochastic tables).
public func runTable(_ table: ScheduleTable, x0: [Double], model: ([Double], Double, Int) throws -> [Double],
                     onStep: ((Int, Int) -> Void)? = nil, noise: ((Int) -> [Double])? = nil) throws -> [Double] {
    var x = x0.map { $0 * table.initNoiseSigma }
    var history: [[Double]] = []
    var drawn: [Int: [Double]] = [:]
    for i in 0..<table.timesteps.count {
        let scale = table.inputScale[i]
        history.append(try model(x.map { $0 * scale }, table.timesteps[i], i))
        let a = table.sampleCoeff[i]
        var next = x.map { a * $0 }
        for (j, c) in table.epsCoeffs[i].enumerated() where c != 0 {
            let e = history[j]
            for k in 0..<next.count { next[k] += c * e[k] }
        }
        for (j, c) in table.noiseCoeffs[i].enumerated() where c != 0 {
            guard let draw = noise else {
                throw PolicyError(message: "schedule table (\(table.scheduler)): step \(i) adds noise; pass noise(step)")
            }
            if drawn[j] == nil { drawn[j] = draw(j) }
            let z = drawn[j]!
            for k in 0..<next.count { next[k] += c * z[k] }
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

public let guidanceCFG = "classifier-free"
public let guidanceConditional = "conditional"
public let guidanceEmbedding = "embedding"

/// How the manifest's sampling applies guidance, as diffusers does: classifier-free (two UNet passes, `guide`)
/// only for guidance_scale > 1 on a UNet without a guidance embedding; conditional (the prompt's prediction
/// alone) for guidance_scale <= 1; embedding (conditional, guidance fed as the UNet's timestep_cond).
public func guidanceMode(_ sampling: [String: Any]) -> String {
    if let mode = sampling["guidance_mode"] as? String { return mode }
    if sampling["guidance_embedding"] != nil { return guidanceEmbedding }
    let scale = (sampling["guidance_scale"] as? NSNumber)?.doubleValue ?? 1
    return scale > 1 ? guidanceCFG : guidanceConditional
}

/// The shared counter-based noise (edgekit/noise.py): Philox4x32-10 keyed by (seed, stream) on counters
/// (block, 0, 0, 0), Box-Muller on word pairs. Stream 0: an image's initial latents; stream j + 1: step j's noise.
public enum Noise {
    static let m0: UInt64 = 0xD2511F53, m1: UInt64 = 0xCD9E8D57
    static let w0: UInt32 = 0x9E3779B9, w1: UInt32 = 0xBB67AE85

    public static func philox4x32(_ counter: [UInt32], key: [UInt32]) -> [UInt32] {
        var c = counter
        var k0 = key[0], k1 = key[1]
        for r in 0..<10 {
            let p0 = m0 * UInt64(c[0])  // both factors < 2^32: the product fits in 64 bits
            let p1 = m1 * UInt64(c[2])
            c = [UInt32(truncatingIfNeeded: p1 >> 32) ^ c[1] ^ k0, UInt32(truncatingIfNeeded: p1),
                 UInt32(truncatingIfNeeded: p0 >> 32) ^ c[3] ^ k1, UInt32(truncatingIfNeeded: p0)]
            if r < 9 { k0 = k0 &+ w0; k1 = k1 &+ w1 }
        }
        return c
    }

    public static func words(seed: UInt32, stream: UInt32, count: Int) -> [UInt32] {
        var out: [UInt32] = []
        out.reserveCapacity(count)
        var block: UInt32 = 0
        while out.count < count {
            let w = philox4x32([block, 0, 0, 0], key: [seed, stream])
            out.append(contentsOf: w.prefix(count - out.count))
            block += 1
        }
        return out
    }

    public static func normals(seed: UInt32, stream: UInt32, count: Int) -> [Double] {
        let pairs = (count + 1) / 2
        let w = words(seed: seed, stream: stream, count: 2 * pairs)
        var out = [Double](repeating: 0, count: count)
        for p in 0..<pairs {
            let u1 = (Double(w[2 * p]) + 0.5) / 4294967296.0, u2 = (Double(w[2 * p + 1]) + 0.5) / 4294967296.0
            let r = (-2 * log(u1)).squareRoot()
            out[2 * p] = r * cos(2 * Double.pi * u2)
            if 2 * p + 1 < count { out[2 * p + 1] = r * sin(2 * Double.pi * u2) }
        }
        return out
    }
}
