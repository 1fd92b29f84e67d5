// edgekit/twin_vectors/step_cache.json and policy_cache.json through the Swift core, as Python and Kotlin run them.
import Foundation
import XCTest
@testable import EdgekitCore

final class StepCacheTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("edgekit/twin_vectors")

    func load(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.root.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    // the vectors' fake graphs (step_cache.json "model"), one row of 6 latent values
    func full(_ x: [Double], _ t: Double, _ h: Double) -> [Double] {
        (0..<6).map { 0.3 * x[$0] + 0.001 * t + 0.01 * Double($0) + 0.05 * h }
            + (0..<3).map { tanh(0.5 * x[$0] + 0.4 * x[3 + $0]) + 0.002 * t + 0.1 * h }
    }

    func shallow(_ x: [Double], _ t: Double, _ h: Double, _ f: [Double]) -> [Double] {
        (0..<6).map { 0.25 * x[$0] + 0.001 * t + 0.01 * Double($0) + 0.05 * h + 0.2 * f[$0 % 3] }
    }

    func testCachedLoopsFollowThePlan() throws {
        let v = try load("step_cache.json")
        let sampling = v["sampling"] as! [String: Any]
        let graphs = try StepCache.graphs(sampling)
        XCTAssertEqual(graphs.full, "unet_full")
        XCTAssertEqual(graphs.shallow, "unet_shallow")
        for c in v["cases"] as! [[String: Any]] {
            let steps = (c["steps"] as! NSNumber).intValue, interval = (c["interval"] as! NSNumber).intValue
            let plan = try StepCache.plan(sampling, interval: interval, steps: steps)
            XCTAssertEqual(plan, c["plan"] as? [String])
            let cfg = (c["guidance_mode"] as! String) == guidanceCFG
            let heads: [Double] = cfg ? [0, 1] : [1]
            let unet = CachedUNet(plan: plan, noiseChannels: graphs.noiseChannels, pixels: 3,
                                  plain: { x, t in heads.flatMap { Array(self.full(x, t, $0)[0..<6]) } },
                                  full: { x, t in heads.flatMap { self.full(x, t, $0) } },
                                  shallow: { x, t, f in heads.enumerated().flatMap { r, h in self.shallow(x, t, h, Array(f[(3 * r)..<(3 * r + 3)])) } })
            let table = try ScheduleTable.from((sampling["schedules"] as! [String: Any])["\(steps)"] as! [String: Any])
            let seed = (c["seed"] as! NSNumber).uint32Value
            let g = (c["guidance_scale"] as! NSNumber).doubleValue
            let out = try runTable(table, x0: Noise.normals(seed: seed, stream: 0, count: 6), model: { x, t, step in
                let eps = try unet.call(step: step, x: x, t: t, rows: heads.count)
                return cfg ? guide(Array(eps[0..<6]), Array(eps[6..<12]), scale: g) : eps
            })
            for (i, e) in (c["expected"] as! [NSNumber]).map({ $0.doubleValue }).enumerated() {
                XCTAssertEqual(out[i], e, accuracy: 1e-9 * max(1, abs(e)), "interval \(interval) x[\(i)]")
            }
        }
        for b in v["bad_plans"] as! [[String: Any]] {
            XCTAssertThrowsError(try StepCache.plan(sampling, interval: (b["interval"] as! NSNumber).intValue,
                                                    steps: (b["steps"] as! NSNumber).intValue)) { error in
                XCTAssertTrue("\(error)".contains(b["error_contains"] as! String), "\(error)")
            }
        }
    }

    func testPolicyPicksCachedRows() throws {
        let v = try load("policy_cache.json")
        let params = try load("policy.json")["policy"] as! [String: Any]
        var cachedChosen = 0
        for c in v["cases"] as! [[String: Any]] {
            let rows = try parseTable((v["tables"] as! [String: Any])[c["table"] as! String])
            let policy = try Policy(config: try PolicyConfig.from(params), rows: rows)
            for s in c["samples"] as! [[String: Any]] {
                let d = policy.decideOrFallback(t: (s["t"] as! NSNumber).doubleValue, state: s["state"], warn: { _ in })
                let e = s["expect"] as! [String: Any]
                XCTAssertEqual(d.steps, (e["steps"] as! NSNumber).intValue)
                XCTAssertEqual(d.width, (e["width"] as! NSNumber).doubleValue)
                XCTAssertEqual(d.cache, (e["cache"] as! NSNumber).intValue)
                XCTAssertEqual(d.reason, e["reason"] as? String)
                XCTAssertEqual(d.overBudget, e["over_budget"] as? Bool)
                XCTAssertEqual(d.budgetMs, (e["budget_ms"] as! NSNumber).doubleValue, accuracy: 1e-6 * max(1, d.budgetMs))
                if d.cache > 1 { cachedChosen += 1 }
            }
        }
        XCTAssertGreaterThan(cachedChosen, 0)
        for b in v["bad_tables"] as! [[String: Any]] {
            XCTAssertThrowsError(try parseTable(b["rows"])) { error in
                XCTAssertTrue("\(error)".contains(b["error_contains"] as! String), "\(b["name"]!): \(error)")
            }
        }
    }
}
