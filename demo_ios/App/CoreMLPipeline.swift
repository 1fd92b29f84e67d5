// Runs a Core ML bundle (edgekit export --target coreml): text encoder, UNet at the policy's width looped
// over the manifest's schedule table with guidance (EdgekitCore), VAE decoder. Compute units: all, so
// Core ML may use the Neural Engine and GPU.
import CoreGraphics
import CoreML
import EdgekitCore
import Foundation

final class CoreMLPipeline {
    let bundle: URL
    let manifest: [String: Any]
    private let tokenizer: ClipTokenizer
    private var models: [String: MLModel] = [:]

    init(bundle: URL) throws {
        self.bundle = bundle
        // json5Allowed: Python's json writes bare Infinity/NaN (diffusers' lambda_min_clipped = -inf).
        manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: bundle.appendingPathComponent("manifest.json")),
                                                    options: [.json5Allowed]) as! [String: Any]
        let tok = manifest["tokenizer"] as! [String: Any]
        tokenizer = try ClipTokenizer.fromTokenizerJson(Data(contentsOf: bundle.appendingPathComponent(tok["tokenizer_json"] as! String)),
                                                        padId: (tok["pad_id"] as? NSNumber)?.intValue)
    }

    private func model(_ key: String, _ spec: [String: Any]) throws -> MLModel {
        if let m = models[key] { return m }
        let config = MLModelConfiguration()
        config.computeUnits = .all
        let url = bundle.appendingPathComponent(spec["file"] as! String)
        // .mlpackage must be compiled once on device; .mlmodelc loads directly.
        let compiled = url.pathExtension == "mlmodelc" ? url : try MLModel.compileModel(at: url)
        let m = try MLModel(contentsOf: compiled, configuration: config)
        models[key] = m
        return m
    }

    private func array(_ values: [Double], shape: [Int], type: MLMultiArrayDataType = .float32) throws -> MLMultiArray {
        let a = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: type)
        for (i, v) in values.enumerated() { a[i] = NSNumber(value: Float(v)) }
        return a
    }

    private func run(_ m: MLModel, _ spec: [String: Any], _ inputs: [String: MLMultiArray]) throws -> [Double] {
        let out = try m.prediction(from: MLDictionaryFeatureProvider(dictionary: inputs))
        let name = ((spec["outputs"] as! [[String: Any]])[0]["name"] as! String)
        let a = out.featureValue(for: name)!.multiArrayValue!
        return (0..<a.count).map { a[$0].doubleValue }
    }

    private func encode(_ prompt: String) throws -> [Double] {
        let components = manifest["components"] as! [String: Any]
        let spec = components["text_encoder"] as! [String: Any]
        let maxLength = (manifest["tokenizer"] as! [String: Any])["max_length"] as! Int
        let ids = tokenizer.encode(prompt, maxLength: maxLength)
        return try run(model("text_encoder", spec), spec, ["input_ids": array(ids.map(Double.init), shape: [1, maxLength], type: .int32)])
    }

    func generate(prompt: String, steps: Int, width: Double, seed: UInt32, onStep: @escaping (Int, Int) -> Void) throws -> CGImage {
        let sampling = manifest["sampling"] as! [String: Any]
        let geometry = manifest["geometry"] as! [String: Any]
        let components = manifest["components"] as! [String: Any]
        let table = try ScheduleTable.from((sampling["schedules"] as! [String: Any])["\(steps)"] as! [String: Any])
        let guidance = (sampling["guidance_scale"] as! NSNumber).doubleValue
        // Guidance as diffusers applies it: the empty prompt's pass only for classifier-free guidance.
        let cfg = guidanceMode(sampling) == guidanceCFG
        let embedding = sampling["guidance_embedding"] as? [String: Any]  // an LCM-style UNet's timestep_cond
        let timestepCond = (embedding?["values"] as? [NSNumber])?.map { $0.doubleValue }
        let latentShape = geometry["latent_shape"] as! [Int]
        let n = latentShape.reduce(1, *)
        let cond = try encode(prompt)
        let uncond = try cfg ? encode("") : []
        let tokens = (manifest["tokenizer"] as! [String: Any])["max_length"] as! Int
        let hiddenShape = [1, tokens, cond.count / tokens]
        let key = String(format: "%.2f", width)
        let spec = ((components["unet"] as! [String: Any])["widths"] as! [String: Any])[key] as! [String: Any]
        let unet = try model("unet/\(key)", spec)
        // Initial and per-step noise from the shared counter-based generator: the same image as Python and the web.
        let x0 = Noise.normals(seed: seed, stream: 0, count: n)
        // A UNet exported with batch 2 (manifest "batching": "batch2") takes [uncond, cond] in one call.
        let unetBatch = ((spec["inputs"] as! [[String: Any]])[0]["shape"] as? [Any])?.first as? Int ?? 1
        func unetRun(_ x: [Double], _ t: Double, _ hidden: [Double], rows: Int) throws -> [Double] {
            var feeds: [String: MLMultiArray] = try [
                "sample": array(Array([[Double]](repeating: x, count: rows).joined()), shape: [rows] + latentShape),
                "timestep": array([Double](repeating: t, count: rows), shape: [rows]),
                "encoder_hidden_states": array(hidden, shape: [rows] + hiddenShape.dropFirst())]
            if let w = timestepCond {
                feeds["timestep_cond"] = try array(Array([[Double]](repeating: w, count: rows).joined()), shape: [rows, w.count])
            }
            return try run(unet, spec, feeds)
        }
        let latents = try runTable(table, x0: x0, model: { x, t, _ in
            if !cfg { return try unetRun(x, t, cond, rows: 1) }
            if unetBatch == 2 {
                let out = try unetRun(x, t, uncond + cond, rows: 2)
                return guide(Array(out[0..<n]), Array(out[n..<(2 * n)]), scale: guidance)
            }
            return guide(try unetRun(x, t, uncond, rows: 1), try unetRun(x, t, cond, rows: 1), scale: guidance)
        }, onStep: onStep, noise: { j in Noise.normals(seed: seed, stream: UInt32(j + 1), count: n) })
        let vaeSpec = components["vae_decoder"] as! [String: Any]
        let scaling = (geometry["vae_scaling_factor"] as! NSNumber).doubleValue
        let size = geometry["image_size"] as! Int
        let pixels = try run(model("vae", vaeSpec), vaeSpec, ["latent_sample": array(latents.map { $0 / scaling }, shape: [1] + latentShape)])
        var rgba = [UInt8](repeating: 255, count: size * size * 4)
        for p in 0..<(size * size) {
            for c in 0..<3 { rgba[p * 4 + c] = UInt8(max(0, min(1, pixels[c * size * size + p] / 2 + 0.5)) * 255) }
        }
        let provider = CGDataProvider(data: Data(rgba) as CFData)!
        return CGImage(width: size, height: size, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: size * 4,
                       space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)!
    }
}
