// Prompt -> image with the Core ML bundle copied into the app (folder reference "bundle"); steps and width
// come from the bundle's policy, re-decided whenever the thermal state, low-power mode or battery changes.
import EdgekitCore
import SwiftUI

@MainActor
final class DemoModel: ObservableObject {
    @Published var prompt = "a handwritten digit seven"
    @Published var image: CGImage?
    @Published var progress = 0.0
    @Published var decisionText = ""
    @Published var stateText = ""
    private let pipeline: CoreMLPipeline?
    private var policy: Policy?
    private var policyError = ""
    private let reader = DeviceStateReader()
    private let started = Date()

    init() {
        let url = Bundle.main.url(forResource: "bundle", withExtension: nil)!
        pipeline = try? CoreMLPipeline(bundle: url)
        do { policy = try pipeline.map { try Policy.fromManifest($0.manifest) } } catch {
            policy = nil
            policyError = "\(error)"  // a bundle without table/policy still runs, cheaply
        }
        reader.start { [weak self] in Task { @MainActor in _ = self?.decide() } }
        _ = decide()
    }

    func decide() -> Decision? {
        let state = reader.read()
        stateText = "device: \(state)"
        let t = Date().timeIntervalSince(started)
        let d: Decision
        if let policy = policy {
            d = policy.decideOrFallback(t: t, state: state) { print("edgekit: \($0)") }
        } else {
            print("edgekit: policy fallback to the cheapest configuration: \(policyError)")
            guard let m = pipeline?.manifest, let f = try? fallbackDecision(m, why: policyError, t: t) else { return nil }
            d = f
        }
        decisionText = "policy: \(d.steps) steps, width \(d.width) (\(d.reason); \(d.detail); predicted \(Int(d.latencyMs)) ms)"
        return d
    }

    func generate() {
        guard let d = decide(), let pipeline = pipeline else { return }
        let prompt = self.prompt
        progress = 0
        Task.detached(priority: .userInitiated) {
            let img = try? pipeline.generate(prompt: prompt, steps: d.steps, width: d.width, seed: 0) { done, total in
                Task { @MainActor in self.progress = Double(done) / Double(total) }
            }
            await MainActor.run { self.image = img }
        }
    }
}

struct ContentView: View {
    @StateObject private var model = DemoModel()

    var body: some View {
        VStack(alignment: .leading, spacing: 12) {
            TextField("prompt", text: $model.prompt).textFieldStyle(.roundedBorder)
            Button("Generate") { model.generate() }
            ProgressView(value: model.progress)
            Text(model.decisionText).font(.caption)
            Text(model.stateText).font(.caption2)
            if let img = model.image {
                Image(decorative: img, scale: 1).interpolation(.none).resizable().frame(width: 256, height: 256)
            }
            Spacer()
        }.padding()
    }
}
