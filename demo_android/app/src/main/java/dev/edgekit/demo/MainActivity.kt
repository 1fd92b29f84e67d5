package dev.edgekit.demo

import android.graphics.Bitmap
import android.os.Bundle
import android.os.SystemClock
import android.util.Log
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.ProgressBar
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import dev.edgekit.core.Decision
import dev.edgekit.core.Policy
import dev.edgekit.core.PolicyException
import dev.edgekit.core.fallbackDecision
import java.io.File
import java.util.concurrent.Executors

/**
 * Prompt -> image with the TFLite bundle pushed to the app's files dir
 * (adb push bundle/tflite /sdcard/Android/data/dev.edgekit.demo/files/bundle); steps and width come
 * from the bundle's policy fed by the thermal listener and the battery. The policy object keeps its
 * hysteresis state for the whole session.
 */
class MainActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var pipeline: LiteRtPipeline
    private var policy: Policy? = null
    private var policyError = ""
    private lateinit var reader: DeviceStateReader
    private val started = SystemClock.elapsedRealtime()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val bundle = File(getExternalFilesDir(null), "bundle")
        pipeline = LiteRtPipeline(bundle)
        try {
            policy = Policy.fromManifest(pipeline.manifest)
        } catch (e: PolicyException) {
            policyError = e.message ?: "unusable policy"  // a bundle without table/policy still runs, cheaply
        }
        reader = DeviceStateReader(this) { runOnUiThread { showDecision(decide()) } }
        findViewById<Button>(R.id.generate).setOnClickListener { generate() }
        showDecision(decide())
    }

    override fun onResume() { super.onResume(); reader.start() }
    override fun onPause() { reader.stop(); super.onPause() }
    override fun onDestroy() { worker.shutdown(); pipeline.close(); super.onDestroy() }

    private fun decide(): Decision {
        val t = (SystemClock.elapsedRealtime() - started) / 1000.0
        val state = reader.read()
        findViewById<TextView>(R.id.state).text = "device: $state"
        val p = policy
        if (p == null) {
            Log.w("edgekit", "policy fallback to the cheapest configuration: $policyError")
            return fallbackDecision(pipeline.manifest, policyError, t)
        }
        return p.decideOrFallback(t, state) { Log.w("edgekit", it) }
    }

    private fun showDecision(d: Decision) {
        findViewById<TextView>(R.id.decision).text =
            "policy: ${d.steps} steps, width ${d.width} (${d.reason}; ${d.detail}; predicted ${d.latencyMs} ms)"
    }

    private fun generate() {
        val d = decide()
        showDecision(d)
        val prompt = findViewById<EditText>(R.id.prompt).text.toString()
        val bar = findViewById<ProgressBar>(R.id.progress)
        bar.max = d.steps
        worker.execute {
            val image: Bitmap = pipeline.generate(prompt, d.steps, d.width, 0L) { done, _ -> runOnUiThread { bar.progress = done } }
            runOnUiThread { findViewById<ImageView>(R.id.image).setImageBitmap(image) }
        }
    }
}
