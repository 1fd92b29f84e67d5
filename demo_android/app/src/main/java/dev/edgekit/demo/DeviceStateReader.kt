package dev.edgekit.demo

import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.os.BatteryManager
import android.os.Build
import android.os.PowerManager

/**
 * Android readings -> the policy's normalised state map (battery_level 0..1, charging, low_power,
 * thermal nominal|fair|serious|critical, optional headroom). The map goes through
 * Policy.decideOrFallback, so an odd reading becomes the cheapest row and a logged warning.
 */
class DeviceStateReader(private val context: Context, private val onThermalChange: () -> Unit) {
    private val power = context.getSystemService(Context.POWER_SERVICE) as PowerManager
    private val listener = PowerManager.OnThermalStatusChangedListener { onThermalChange() }

    fun start() = power.addThermalStatusListener(context.mainExecutor, listener)
    fun stop() = power.removeThermalStatusListener(listener)

    fun read(): Map<String, Any?> {
        val battery = context.registerReceiver(null, IntentFilter(Intent.ACTION_BATTERY_CHANGED))
        val level = battery?.getIntExtra(BatteryManager.EXTRA_LEVEL, -1) ?: -1
        val scale = battery?.getIntExtra(BatteryManager.EXTRA_SCALE, -1) ?: -1
        val status = battery?.getIntExtra(BatteryManager.EXTRA_STATUS, -1) ?: -1
        val state = HashMap<String, Any?>()
        // Unknown level stays out of range on purpose: the policy then falls back to the cheapest row.
        state["battery_level"] = if (level >= 0 && scale > 0) level.toDouble() / scale else -1.0
        state["charging"] = status == BatteryManager.BATTERY_STATUS_CHARGING || status == BatteryManager.BATTERY_STATUS_FULL
        state["low_power"] = power.isPowerSaveMode
        state["thermal"] = thermalName(power.currentThermalStatus)
        if (Build.VERSION.SDK_INT >= 30) {
            val headroom = power.getThermalHeadroom(10)
            if (!headroom.isNaN()) state["headroom"] = headroom.toDouble()
        }
        return state
    }

    companion object {
        /** Android's seven THERMAL_STATUS_* levels onto the four the policy shares with iOS and the web. */
        fun thermalName(status: Int): String = when (status) {
            PowerManager.THERMAL_STATUS_NONE, PowerManager.THERMAL_STATUS_LIGHT -> "nominal"
            PowerManager.THERMAL_STATUS_MODERATE -> "fair"
            PowerManager.THERMAL_STATUS_SEVERE -> "serious"
            PowerManager.THERMAL_STATUS_CRITICAL, PowerManager.THERMAL_STATUS_EMERGENCY,
            PowerManager.THERMAL_STATUS_SHUTDOWN -> "critical"
            else -> "unknown" // refused by the policy: fallback to the cheapest row
        }
    }
}
