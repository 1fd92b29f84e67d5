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
    private let policy: Policy?
    private let reader = DeviceStateReader()
    private let started = Date()

    init() {
        let url = Bundle.main.url(forResource: "bundle", withExtension: nil)!
        pipeline = try? CoreMLPipeline(bundle: url)
        policy = pipeline.flatMap { try? Policy.fromManifest($0.manifest) }
        if policy == nil { decisionText = "bundle has no measured table or policy: run `edgekit bench`" }
        reader.start { [weak self] in Task { @MainActor in _ = self?.decide() } }
        _ = decide()
    }

    func decide() -> Decision? {
        guard let policy = policy else { return nil }
        let state = reader.read()
        stateText = "device: \(state)"
        let d = policy.decideOrFallback(t: Date().timeIntervalSince(started), state: state) { print("edgekit: \($0)") }
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
