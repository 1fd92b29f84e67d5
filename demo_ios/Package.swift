// swift-tools-version:5.9
// The iOS demo's platform-free core (policy, tokenizer, schedule loop) as a Swift package, tested with
// XCTest over the shared vectors in ../edgekit/twin_vectors (`swift test` on macOS). The SwiftUI app in
// App/ links this package.
import PackageDescription

let package = Package(
    name: "EdgekitCore",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "EdgekitCore", targets: ["EdgekitCore"])],
    targets: [
        .target(name: "EdgekitCore"),
        .testTarget(name: "EdgekitCoreTests", dependencies: ["EdgekitCore"]),
    ]
)
