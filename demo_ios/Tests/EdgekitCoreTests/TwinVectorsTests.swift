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

    func testPolicyCases() throws {
        let v = try load("policy.json")
        var checked = 0
        for c in v["cases"] as! [[String: Any]] {
            var merged = v["policy"] as! [String: Any]
            for (k, val) in c["policy_overrides"] as! [String: Any] { merged[k] = val }
            let policy = try Policy(config: try PolicyConfig.from(merged), rows: try parseTable(v["table"]))
            for s in c["samples"] as! [[String: Any]] {
                let t = (s["t"] as! NSNumber).doubleValue
                let d = policy.decideOrFallback(t: t, state: s["state"], warn: { _ in })
                let e = s["expect"] as! [String: Any]
                let at = "\(c["name"]!) t=\(t)"
                XCTAssertEqual(d.steps, e["steps"] as? Int, at)
                XCTAssertEqual(d.width, (e["width"] as! NSNumber).doubleValue, at)
                XCTAssertEqual(d.reason, e["reason"] as? String, at)
                XCTAssertEqual(d.overBudget, e["over_budget"] as? Bool, at)
                let budget = (e["budget_ms"] as! NSNumber).doubleValue
                XCTAssertEqual(d.budgetMs, budget, accuracy: 1e-6 * max(1, budget), at)
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 30)
    }

    func testBadInputsNameTheKey() throws {
        let v = try load("policy.json")
        func expect(_ needle: String, _ what: String, _ block: () throws -> Void) {
            do { try block(); XCTFail("\(what): no error") } catch { XCTAssertTrue("\(error)".contains(needle), "\(what): \(error)") }
        }
        for b in v["bad_policies"] as! [[String: Any]] { expect(b["error_contains"] as! String, b["name"] as! String) { _ = try PolicyConfig.from(b["policy"]) } }
        for b in v["bad_states"] as! [[String: Any]] { expect(b["error_contains"] as! String, b["name"] as! String) { _ = try DeviceState.from(b["state"]) } }
        for b in v["bad_tables"] as! [[String: Any]] { expect(b["error_contains"] as! String, b["name"] as! String) { _ = try parseTable(b["table"]) } }
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

    func testSchedulerCases() throws {
        let v = try load("scheduler.json")
        for c in v["cases"] as! [[String: Any]] {
            let table = try ScheduleTable.from(c["table"] as! [String: Any])
            let g = (c["guidance_scale"] as! NSNumber).doubleValue
            let x0 = (c["x0"] as! [NSNumber]).map { $0.doubleValue }
            var steps = 0
            let out = runTable(table, x0: x0, model: { x, t, _ in
                let cond = x.enumerated().map { i, v in 0.3 * v + 0.001 * t + 0.01 * Double(i) }
                let uncond = x.map { 0.2 * $0 - 0.0005 * t }
                return guide(uncond, cond, scale: g)
            }, onStep: { _, _ in steps += 1 })
            XCTAssertEqual(steps, c["steps"] as? Int)
            for (i, e) in (c["expected"] as! [NSNumber]).map({ $0.doubleValue }).enumerated() {
                XCTAssertEqual(out[i], e, accuracy: 1e-9 * max(1, abs(e)), "x[\(i)]")
            }
        }
    }
}
