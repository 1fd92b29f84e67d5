// The shared vectors (edgekit/twin_vectors) through the Swift core, as Python, JS and Kotlin run them.
import Foundation
import XCTest
@testable import EdgekitCore

final class TwinVectorsTests: XCTestCase {
    /// demo_ios/Tests/EdgekitCoreTests/<this file> -> repository root -> edgekit/twin_vectors
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("edgekit/twin_vectors")

    func load(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.root.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    func double(_ v: Any?) -> Double { (v as! NSNumber).doubleValue }

    func close(_ expected: Double, _ got: Double, _ rel: Double) -> Bool { abs(got - expected) <= rel * max(1, abs(expected)) }

    func table(_ v: [String: Any], _ name: Any?) throws -> [Row] {
        try parseTable((v["tables"] as! [String: Any])[name as! String])
    }

    func runs(_ data: Any?) throws -> [LatencyRun] {
        try (data as! [Any]).enumerated().map { i, r in try LatencyRun.from(r, where: "latency runs[\(i)]") }
    }

    func testPolicyCases() throws {
        let v = try load("policy.json")
        var checked = 0
        for c in v["cases"] as! [[String: Any]] {
            var merged = v["policy"] as! [String: Any]
            for (k, val) in c["policy_overrides"] as! [String: Any] { merged[k] = val }
            let rows = try table(v, c["table"])
            var ratio = 1.0
            if let rescale = c["rescale"] as? [String: Any] {
                ratio = try latencyRatio(try runs(rescale["runs"]), rows: rows)
                XCTAssertTrue(close(double(rescale["ratio"]), ratio, 1e-12), "\(c["name"]!): ratio \(ratio)")
            }
            var policy = try Policy(config: try PolicyConfig.from(merged), rows: rows, latencyRatio: ratio)
            for s in c["samples"] as! [[String: Any]] {
                if let r = s["latency_ratio"] { policy = try policy.rescaled(double(r)) }
                let t = double(s["t"])
                let d = policy.decideOrFallback(t: t, state: s["state"], warn: { _ in })
                let e = s["expect"] as! [String: Any]
                let at = "\(c["name"]!) t=\(t)"
                XCTAssertEqual(d.steps, e["steps"] as? Int, at)
                XCTAssertEqual(d.width, double(e["width"]), at)
                XCTAssertEqual(d.reason, e["reason"] as? String, at)
                XCTAssertEqual(d.overBudget, e["over_budget"] as? Bool, at)
                XCTAssertTrue(close(double(e["budget_ms"]), d.budgetMs, 1e-6), "\(at): budget \(d.budgetMs)")
                XCTAssertTrue(close(double(e["latency_ms"]), d.latencyMs, 1e-6), "\(at): latency \(d.latencyMs)")
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 60)
        for r in v["latency_ratios"] as! [[String: Any]] {
            let got = try latencyRatio(try runs(r["runs"]), rows: try table(v, r["table"]))
            XCTAssertTrue(close(double(r["ratio"]), got, 1e-12), "\(r["name"]!): \(got)")
        }
    }

    func testBadInputsNameTheKey() throws {
        let v = try load("policy.json")
        func expect(_ needle: String, _ what: String, _ block: () throws -> Void) {
            do { try block(); XCTFail("\(what): no error") } catch { XCTAssertTrue("\(error)".contains(needle), "\(what): \(error)") }
        }
        for b in v["bad_policies"] as! [[String: Any]] { expect(b["error_contains"] as! String, b["name"] as! String) { _ = try PolicyConfig.from(b["policy"]) } }
        for b in v["bad_states"] as! [[String: Any]] { expect(b["error_contains"] as! String, b["name"] as! String) { _ = try DeviceState.from(b["state"]) } }
        for b in v["bad_tables"] as! [[String: Any]] { expect(b["error_contains"] as! String, b["name"] as! String) { _ = try parseTable(b["table"]) } }
        for b in v["bad_rescales"] as! [[String: Any]] {
            let rows = try table(v, b["table"])
            expect(b["error_contains"] as! String, b["name"] as! String) {
                if b["runs"] != nil { _ = try latencyRatio(try runs(b["runs"]), rows: rows) } else { _ = try rescaleTable(rows, ratio: double(b["ratio"])) }
            }
        }
        for b in v["bad_manifests"] as! [[String: Any]] {
            let manifest = b["manifest"] as! [String: Any]
            expect(b["error_contains"] as! String, b["name"] as! String) { _ = try Policy.fromManifest(manifest) }
            let d = try fallbackDecision(manifest, why: "test")
            let e = b["fallback"] as! [String: Any]
            XCTAssertEqual(d.steps, e["steps"] as? Int, b["name"] as? String)
            XCTAssertEqual(d.width, (e["width"] as! NSNumber).doubleValue)
            XCTAssertEqual(d.reason, "fallback")
        }
    }

    func testTokenizerCases() throws {
        let v = try load("tokenizer_cases.json")
        let tok = try ClipTokenizer.fromTokenizerJson(try Data(contentsOf: Self.root.appendingPathComponent(v["tokenizer"] as! String)))
        let maxLength = v["max_length"] as! Int
        for c in v["cases"] as! [[String: Any]] {
            XCTAssertEqual(tok.encode(c["text"] as! String, maxLength: maxLength), c["ids"] as! [Int], c["text"] as! String)
        }
    }

    func testTokenizerPadsWithTheManifestPadId() throws {
        let v = try load("tokenizer_pad_cases.json")
        let tok = try ClipTokenizer.fromTokenizerJson(try Data(contentsOf: Self.root.appendingPathComponent(v["tokenizer"] as! String)),
                                                      padId: v["pad_id"] as? Int)
        let maxLength = v["max_length"] as! Int
        for c in v["cases"] as! [[String: Any]] {
            XCTAssertEqual(tok.encode(c["text"] as! String, maxLength: maxLength), c["ids"] as! [Int], "padded: \(c["text"] as! String)")
        }
    }

    func testNoiseGenerator() throws {
        let v = try load("noise.json")
        func words(_ x: Any?) -> [UInt32] { (x as! [NSNumber]).map { $0.uint32Value } }
        for k in v["philox4x32_10"] as! [[String: Any]] {
            XCTAssertEqual(Noise.philox4x32(words(k["counter"]), key: words(k["key"])), words(k["words"]))
        }
        for s in v["streams"] as! [[String: Any]] {
            let seed = (s["seed"] as! NSNumber).uint32Value, stream = (s["stream"] as! NSNumber).uint32Value
            let expectedWords = words(s["words"])
            XCTAssertEqual(Noise.words(seed: seed, stream: stream, count: expectedWords.count), expectedWords)
            let expected = (s["normals"] as! [NSNumber]).map { $0.doubleValue }
            let z = Noise.normals(seed: seed, stream: stream, count: expected.count)
            for (i, e) in expected.enumerated() { XCTAssertEqual(z[i], e, accuracy: 1e-12, "normals \(seed)/\(stream) [\(i)]") }
        }
    }

    func testSchedulerCases() throws {
        let v = try load("scheduler.json")
        for c in v["cases"] as! [[String: Any]] {
            let name = c["name"] as! String
            let table = try ScheduleTable.from(c["table"] as! [String: Any])
            let sampling = c["sampling"] as! [String: Any]
            let mode = guidanceMode(sampling)
            XCTAssertEqual(mode, c["guidance_mode"] as? String, name)
            let g = (sampling["guidance_scale"] as! NSNumber).doubleValue
            let seed = (c["seed"] as! NSNumber).uint32Value
            let stored = (c["x0"] as! [NSNumber]).map { $0.doubleValue }
            let n = stored.count
            let x0 = Noise.normals(seed: seed, stream: 0, count: n)
            for (i, e) in stored.enumerated() { XCTAssertEqual(x0[i], e, accuracy: 1e-12, "\(name) x0[\(i)]") }
            var condCalls = 0, uncondCalls = 0, steps = 0
            let out = try runTable(table, x0: x0, model: { x, t, _ in
                condCalls += 1
                let cond = x.enumerated().map { i, v in 0.3 * v + 0.001 * t + 0.01 * Double(i) }
                if mode != guidanceCFG { return cond }
                uncondCalls += 1
                return guide(x.map { 0.2 * $0 - 0.0005 * t }, cond, scale: g)
            }, onStep: { _, _ in steps += 1 }, noise: { j in Noise.normals(seed: seed, stream: UInt32(j + 1), count: n) })
            XCTAssertEqual(steps, table.timesteps.count, name)
            XCTAssertEqual(condCalls, c["cond_calls"] as? Int, name)
            XCTAssertEqual(uncondCalls, c["uncond_calls"] as? Int, name)
            for (i, e) in (c["expected"] as! [NSNumber]).map({ $0.doubleValue }).enumerated() {
                XCTAssertEqual(out[i], e, accuracy: 1e-9 * max(1, abs(e)), "\(name) x[\(i)]")
            }
        }
    }
}
