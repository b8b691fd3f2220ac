// swift-tools-version:6.2
import PackageDescription

/// One set of settings for every target: Swift 6 language mode (strict concurrency) everywhere.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "fanflow",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fanflow", targets: ["fanflow"]),
        .library(name: "Contracts", targets: ["Contracts"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // SHA-1/SHA-256/HMAC, AES (GCM; CBC for WeChat), Ed25519 (QQ) and RSA (Alipay, via _CryptoExtras).
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // Already in the graph through Hummingbird; named for HTTPField.Name and SocketAddress.
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        // The push pool's calls to the platforms' message APIs, and its templates.
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
    ],
    targets: [
        // C libraries, seen through system-library targets. Only the three client modules import them.
        .systemLibrary(name: "CRabbitMQ", pkgConfig: "librabbitmq", providers: [.apt(["librabbitmq-dev"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),

        // A dedicated OS thread as an actor executor: where blocking C calls are allowed to run.
        .target(name: "ClientSupport", swiftSettings: swiftSettings),

        .target(name: "AMQPClient",
                dependencies: ["CRabbitMQ", "ClientSupport", .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),
        .target(name: "RedisClient",
                dependencies: ["CHiredis", "ClientSupport"],
                swiftSettings: swiftSettings),
        .target(name: "PostgresClient",
                dependencies: ["CLibPQ", "ClientSupport"],
                swiftSettings: swiftSettings),

        .target(name: "Contracts", swiftSettings: swiftSettings),
        // The loyalty program's domain: rules, members, Redis decisions, the ledger.
        .target(name: "Loyalty",
                dependencies: ["Contracts", "PostgresClient", "RedisClient", "Scheduler"],
                resources: [.copy("Resources")],
                swiftSettings: swiftSettings),
        // Flash sales: campaigns, live stock in Redis (one Lua call per decision), orders in PostgreSQL.
        .target(name: "FlashSales",
                dependencies: ["Contracts", "PostgresClient", "RedisClient", "Scheduler"],
                resources: [.copy("Resources")],
                swiftSettings: swiftSettings),
        // Dead letters an operator can list, replay and drop; knows no broker and no HTTP.
        .target(name: "DeadLetters",
                dependencies: ["Contracts", "PostgresClient"],
                swiftSettings: swiftSettings),
        .target(name: "Storage",
                dependencies: ["PostgresClient", .product(name: "Logging", package: "swift-log")],
                resources: [.copy("Migrations")],
                swiftSettings: swiftSettings),

        // Alipay's RSA2 signatures: the gateway checks notifications with them, the push pool signs
        // its requests, and the fake platform plays Alipay's side.
        .target(name: "PlatformSigning",
                dependencies: [.product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "_CryptoExtras", package: "swift-crypto")],
                swiftSettings: swiftSettings),

        // Pushes: templates (Mustache), triggers, the platforms' message APIs and their shared access
        // tokens, pace and quota.
        .target(name: "Pushes",
                dependencies: ["Contracts", "PostgresClient", "RedisClient", "Scheduler", "PlatformSigning",
                               .product(name: "AsyncHTTPClient", package: "async-http-client"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Mustache", package: "swift-mustache"),
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),
        // A stand-in for WeChat's message APIs (token, stable token, template and custom messages) with
        // their real request and answer shapes and faults on demand: for tests, demos and benches.
        .target(name: "FakePlatform",
                dependencies: ["PlatformSigning", .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "_CryptoExtras", package: "swift-crypto")],
                swiftSettings: swiftSettings),

        // Process plumbing shared by gateway, workers and scheduler.
        .target(name: "Runtime",
                dependencies: ["Contracts", "AMQPClient", "ClientSupport",
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),

        .target(name: "Gateway",
                dependencies: ["DeadLetters", "Contracts", "Runtime", "Loyalty", "Scheduler", "FlashSales", "Pushes", "AMQPClient", "RedisClient",
                               "PostgresClient", "Storage", "PlatformSigning",
                               .product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "_CryptoExtras", package: "swift-crypto"),
                               .product(name: "HTTPTypes", package: "swift-http-types"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                resources: [.copy("Resources/sdk.js")],
                swiftSettings: swiftSettings),
        .target(name: "Workers",
                dependencies: ["DeadLetters", "Contracts", "Runtime", "Loyalty", "Scheduler", "FlashSales", "Pushes", "AMQPClient", "RedisClient", "PostgresClient",
                               "Storage", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: swiftSettings),
        // Durable delayed and periodic jobs, the business calendar and leader election: a library
        // the gateway and workers enqueue through, and the scheduler process's dispatch loop.
        .target(name: "Scheduler",
                dependencies: ["Contracts", "Runtime", "AMQPClient", "PostgresClient", "ClientSupport",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: swiftSettings),

        .executableTarget(name: "fanflow",
                          dependencies: ["DeadLetters", "Contracts", "Runtime", "Gateway", "Workers", "Scheduler", "Storage", "Loyalty", "FlashSales",
                                         "Pushes", "FakePlatform", "PlatformSigning", "AMQPClient", "PostgresClient", "RedisClient",
                                         .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log"),
                                         .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                          swiftSettings: swiftSettings),
        // The bench signs requests itself (swift-crypto) and drives HTTP with its own SwiftNIO load
        // generator: it depends on no product module but the clients and Contracts' wire types.
        .executableTarget(name: "FanFlowBench",
                          dependencies: ["Contracts", "AMQPClient", "RedisClient", "PostgresClient",
                                         .product(name: "Crypto", package: "swift-crypto"),
                                         .product(name: "_CryptoExtras", package: "swift-crypto"),
                                         .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                         .product(name: "NIOCore", package: "swift-nio"),
                                         .product(name: "NIOPosix", package: "swift-nio"),
                                         .product(name: "NIOHTTP1", package: "swift-nio"),
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: swiftSettings),

        .testTarget(name: "UnitTests",
                    dependencies: ["Contracts", "ClientSupport", "AMQPClient", "Gateway", "Loyalty", "Scheduler", "FlashSales", "PlatformSigning",
                                   .product(name: "Crypto", package: "swift-crypto"),
                                   .product(name: "_CryptoExtras", package: "swift-crypto")],
                    swiftSettings: swiftSettings),
        .testTarget(name: "IntegrationTests",
                    dependencies: ["DeadLetters", "Contracts", "Runtime", "Workers", "Gateway", "Loyalty", "Scheduler", "FlashSales", "AMQPClient",
                                   "RedisClient", "Pushes", "FakePlatform", "PlatformSigning",
                                   "PostgresClient", "Storage",
                                   .product(name: "Crypto", package: "swift-crypto"),
                                   .product(name: "_CryptoExtras", package: "swift-crypto"),
                                   .product(name: "HummingbirdTesting", package: "hummingbird")],
                    swiftSettings: swiftSettings),
    ]
)
