// iOS readings -> the policy's normalised state: ProcessInfo.thermalState, low-power mode, UIDevice battery.
// The map goes through Policy.decideOrFallback, so an unknown reading becomes the cheapest row and a warning.
import Foundation
import UIKit

final class DeviceStateReader {
    private var observers: [NSObjectProtocol] = []

    /// Calls `onChange` whenever thermal state, low-power mode or battery changes.
    func start(onChange: @escaping () -> Void) {
        UIDevice.current.isBatteryMonitoringEnabled = true
        let center = NotificationCenter.default
        for name in [ProcessInfo.thermalStateDidChangeNotification, Notification.Name.NSProcessInfoPowerStateDidChange,
                     UIDevice.batteryLevelDidChangeNotification, UIDevice.batteryStateDidChangeNotification] {
            observers.append(center.addObserver(forName: name, object: nil, queue: .main) { _ in onChange() })
        }
    }

    func stop() { observers.forEach { NotificationCenter.default.removeObserver($0) }; observers = [] }

    func read() -> [String: Any] {
        let device = UIDevice.current
        // batteryLevel is -1 when unknown (simulator): left out of range on purpose, the policy falls back.
        let charging = device.batteryState == .charging || device.batteryState == .full
        return ["battery_level": Double(device.batteryLevel), "charging": charging,
                "low_power": ProcessInfo.processInfo.isLowPowerModeEnabled,
                "thermal": Self.thermalName(ProcessInfo.processInfo.thermalState)]
    }

    static func thermalName(_ s: ProcessInfo.ThermalState) -> String {
        switch s {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "unknown"
        }
    }
}
