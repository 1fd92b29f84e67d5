package dev.edgekit.demo

import android.graphics.Bitmap
import android.util.Log
import dev.edgekit.core.ClipTokenizer
import dev.edgekit.core.GUIDANCE_CFG
import dev.edgekit.core.Json
import dev.edgekit.core.Noise
import dev.edgekit.core.ScheduleTable
import dev.edgekit.core.guidanceMode
import dev.edgekit.core.guide
import dev.edgekit.core.runTable
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Runs a TFLite bundle (edgekit export --target tflite) with the LiteRT Interpreter: the GPU delegate
 * when the device supports it, else CPU threads. Tokenizer, schedule loop and guidance come from the
 * pure-Kotlin core, so every number here matches the Python and browser runtimes.
 */
@Suppress("UNCHECKED_CAST")
class LiteRtPipeline(private val bundle: File) : AutoCloseable {
    val manifest = Json.parse(File(bundle, "manifest.json").readText()) as Map<String, Any?>
    private val components = manifest["components"] as Map<String, Any?>
    private val tokenizerInfo = manifest["tokenizer"] as Map<String, Any?>
    private val tokenizer = ClipTokenizer.fromTokenizerJson(File(bundle, tokenizerInfo["tokenizer_json"] as String).readText(),
        (tokenizerInfo["pad_id"] as? Double)?.toInt())
    private val maxLength = (tokenizerInfo["max_length"] as Double).toInt()
    private val sampling = manifest["sampling"] as Map<String, Any?>
    private val geometry = manifest["geometry"] as Map<String, Any?>
    private val interpreters = HashMap<String, Interpreter>()
    private val delegates = ArrayList<GpuDelegate>()

    private fun interpreter(key: String, spec: Map<String, Any?>): Interpreter = interpreters.getOrPut(key) {
        val options = Interpreter.Options()
        if (CompatibilityList().isDelegateSupportedOnThisDevice) {
            val delegate = GpuDelegate(CompatibilityList().bestOptionsForThisDevice)
            delegates.add(delegate)
            options.addDelegate(delegate)
        } else options.setNumThreads(4)
        Interpreter(File(bundle, spec["file"] as String), options)
    }

    private fun unetSpec(width: Double): Map<String, Any?> {
        val widths = (components["unet"] as Map<String, Any?>)["widths"] as Map<String, Any?>
        return widths[String.format(java.util.Locale.ROOT, "%.2f", width)] as Map<String, Any?>
    }

    private fun floats(values: DoubleArray): ByteBuffer {
        val b = ByteBuffer.allocateDirect(values.size * 4).order(ByteOrder.nativeOrder())
        values.forEach { b.putFloat(it.toFloat()) }
        b.rewind()
        return b
    }

    private fun run(interp: Interpreter, spec: Map<String, Any?>, inputs: Map<String, Any>, outSize: Int): DoubleArray {
        val names = (spec["inputs"] as List<Map<String, Any?>>).map { it["name"] as String }
        val ordered = arrayOfNulls<Any>(names.size)
        // Signature order can differ from the manifest order: place each input by the interpreter's own index.
        names.forEach { n -> ordered[interp.getInputIndex(n)] = inputs.getValue(n) }
        val out = ByteBuffer.allocateDirect(outSize * 4).order(ByteOrder.nativeOrder())
        interp.runForMultipleInputsOutputs(ordered, mapOf(0 to out))
        out.rewind()
        return DoubleArray(outSize) { out.float.toDouble() }
    }

    private fun encode(prompt: String): DoubleArray {
        val spec = components["text_encoder"] as Map<String, Any?>
        val ids = tokenizer.encode(prompt, maxLength)
        // Every edgekit text encoder takes int32 token ids (LiteRT, Core ML and ONNX alike).
        val idType = (spec["inputs"] as List<Map<String, Any?>>)[0]["dtype"]
        require(idType == "int32") { "text_encoder input_ids dtype $idType: expected int32 (re-export the bundle)" }
        val idsBuf = ByteBuffer.allocateDirect(ids.size * 4).order(ByteOrder.nativeOrder())
        ids.forEach { idsBuf.putInt(it) }
        idsBuf.rewind()
        val outShape = ((spec["outputs"] as List<Map<String, Any?>>)[0]["shape"] as List<Any?>).drop(1).map { (it as Double).toInt() }
        return run(interpreter("text_encoder", spec), spec, mapOf("input_ids" to idsBuf), outShape.fold(1) { a, b -> a * b })
    }

    /** One image for (prompt, steps, width); onStep reports progress per UNet call. */
    fun generate(prompt: String, steps: Int, width: Double, seed: Long, onStep: (Int, Int) -> Unit): Bitmap {
        val schedules = sampling["schedules"] as Map<String, Any?>
        val table = ScheduleTable.fromMap(schedules[steps.toString()] as Map<String, Any?>)
        val guidance = sampling["guidance_scale"] as Double
        // Guidance as diffusers applies it: the empty prompt's pass only for classifier-free guidance.
        val cfg = guidanceMode(sampling) == GUIDANCE_CFG
        val embedding = sampling["guidance_embedding"] as Map<String, Any?>?  // an LCM-style UNet's timestep_cond
        val timestepCond = (embedding?.get("values") as List<Any?>?)?.map { it as Double }?.toDoubleArray()
        val latentShape = (geometry["latent_shape"] as List<Any?>).map { (it as Double).toInt() }
        val n = latentShape.fold(1) { a, b -> a * b }
        val cond = encode(prompt)
        val uncond = if (cfg) encode("") else DoubleArray(0)
        val spec = unetSpec(width)
        val unet = interpreter("unet/$width", spec)
        // Initial and per-step noise from the shared counter-based generator: the same image as Python and the web.
        val x0 = Noise.normals(seed, 0, n)
        // A UNet exported with batch 2 (manifest "batching": "batch2") takes [uncond, cond] in one call.
        val unetBatch = (((spec["inputs"] as List<Map<String, Any?>>)[0]["shape"] as List<Any?>)[0] as? Double)?.toInt() ?: 1
        fun unetRun(x: DoubleArray, t: Double, hidden: DoubleArray, rows: Int): DoubleArray {
            val feeds = HashMap<String, Any>()
            feeds["sample"] = floats(DoubleArray(rows * n) { x[it % n] })
            feeds["timestep"] = floats(DoubleArray(rows) { t })
            feeds["encoder_hidden_states"] = floats(hidden)
            if (timestepCond != null) feeds["timestep_cond"] = floats(DoubleArray(rows * timestepCond.size) { timestepCond[it % timestepCond.size] })
            return run(unet, spec, feeds, rows * n)
        }
        val latents = runTable(table, x0, { x, t, _ ->
            when {
                !cfg -> unetRun(x, t, cond, 1)
                unetBatch == 2 -> { val out = unetRun(x, t, uncond + cond, 2); guide(out.copyOfRange(0, n), out.copyOfRange(n, 2 * n), guidance) }
                else -> guide(unetRun(x, t, uncond, 1), unetRun(x, t, cond, 1), guidance)
            }
        }, onStep, { j -> Noise.normals(seed, (j + 1).toLong(), n) })
        val vaeSpec = components["vae_decoder"] as Map<String, Any?>
        val scaling = geometry["vae_scaling_factor"] as Double
        val size = (geometry["image_size"] as Double).toInt()
        val pixels = run(interpreter("vae", vaeSpec), vaeSpec, mapOf("latent_sample" to floats(DoubleArray(n) { latents[it] / scaling })), 3 * size * size)
        val argb = IntArray(size * size) { p ->
            fun ch(c: Int) = (((pixels[c * size * size + p] / 2 + 0.5).coerceIn(0.0, 1.0)) * 255).toInt()
            (0xFF shl 24) or (ch(0) shl 16) or (ch(1) shl 8) or ch(2)
        }
        Log.i("edgekit", "generated $steps steps at width $width")
        return Bitmap.createBitmap(argb, size, size, Bitmap.Config.ARGB_8888)
    }

    override fun close() {
        interpreters.values.forEach { it.close() }
        delegates.forEach { it.close() }
    }
}
