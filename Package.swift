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
        // The job queue every domain enqueues its own follow-up work into (enqueue, claim with SKIP
        // LOCKED, outcomes, unique keys), the runner a process drives its job kinds with, periodic
        // schedules (cron) and the business calendar due times are counted on. No broker, no HTTP.
        .target(name: "Jobs",
                dependencies: ["Contracts", "PostgresClient", "ClientSupport",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: swiftSettings),
        // Members: identities per platform app, unionid links, phone binding and merges; every domain
        // finds its member here without importing Loyalty.
        .target(name: "Members",
                dependencies: ["Contracts", "PostgresClient"],
                swiftSettings: swiftSettings),
        // The loyalty program's domain: rules, Redis decisions, the ledger.
        .target(name: "Loyalty",
                dependencies: ["Contracts", "Jobs", "Members", "PostgresClient", "RedisClient"],
                resources: [.copy("Resources")],
                swiftSettings: swiftSettings),
        // Flash sales: campaigns, live stock in Redis (one Lua call per decision), orders in PostgreSQL.
        // Tags, tag rules on sliding windows, segments and portraits.
        .target(name: "Audiences",
                dependencies: ["Contracts", "Members", "Jobs", "PostgresClient"],
                swiftSettings: swiftSettings),
        .target(name: "FlashSales",
                dependencies: ["Contracts", "Jobs", "PostgresClient", "RedisClient", .product(name: "Logging", package: "swift-log")],
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

        // The platforms as FanFlow talks to them: their signatures and ciphers (WeChat's AES and
        // SHA-1, WeChat Pay v3, Alipay RSA2, QQ Ed25519), their message APIs, and the shared WeChat
        // access token. Gateway checks with it, pushes send with it, the fake platform plays it.
        .target(name: "Platforms",
                dependencies: ["Contracts", "RedisClient",
                               .product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "_CryptoExtras", package: "swift-crypto"),
                               .product(name: "AsyncHTTPClient", package: "async-http-client"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")],
                resources: [.copy("Resources")],
                swiftSettings: swiftSettings),
        // Registered apps and their sealed credentials (AES-GCM under keys derived from
        // FANFLOW_SECRET_KEY), cached per process: the gateway and every worker read apps here.
        .target(name: "Apps",
                dependencies: ["Contracts", "ClientSupport", "Platforms", "PostgresClient",
                               .product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),

        // Pushes: the push lifecycle as services with outcome enums (triggers, sending with retries,
        // broadcasts, receipts), its job kinds' handlers, templates (Mustache), pace and quota, and
        // their Lua scripts. No broker, no HTTP server: the push worker and the gateway adapt it.
        .target(name: "Pushes",
                dependencies: ["Contracts", "Jobs", "PostgresClient", "RedisClient", "Platforms",
                               .product(name: "AsyncHTTPClient", package: "async-http-client"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Mustache", package: "swift-mustache"),
                               .product(name: "Logging", package: "swift-log")],
                resources: [.copy("Resources")],
                swiftSettings: swiftSettings),
        // A stand-in for WeChat's message APIs (token, stable token, template and custom messages) with
        // their real request and answer shapes and faults on demand: for tests, demos and benches.
        .target(name: "FakePlatform",
                dependencies: ["Platforms", .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "_CryptoExtras", package: "swift-crypto")],
                swiftSettings: swiftSettings),

        // Process plumbing shared by gateway, workers and scheduler.
        .target(name: "Runtime",
                dependencies: ["Audiences", "Contracts", "AMQPClient", "ClientSupport", "Pushes",
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: swiftSettings),

        .target(name: "Gateway",
                dependencies: ["Apps", "Audiences", "DeadLetters", "Contracts", "Runtime", "Jobs", "Loyalty", "Members", "FlashSales", "Pushes", "AMQPClient", "RedisClient",
                               "PostgresClient", "Storage", "Platforms",
                               .product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "_CryptoExtras", package: "swift-crypto"),
                               .product(name: "HTTPTypes", package: "swift-http-types"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                resources: [.copy("Resources/sdk.js"), .copy("Resources/Lua")],
                swiftSettings: swiftSettings),
        // One delivery per event: history and every domain's writes in one transaction per batch.
        // Knows no broker: the worker's consumer feeds it.
        .target(name: "Pipeline",
                dependencies: ["Audiences", "Contracts", "Loyalty", "PostgresClient"],
                swiftSettings: swiftSettings),
        .target(name: "Workers",
                dependencies: ["Apps", "Pipeline", "Members", "DeadLetters", "Contracts", "Runtime", "Jobs", "Loyalty", "FlashSales", "Pushes", "AMQPClient", "RedisClient", "PostgresClient",
                               "Storage", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: swiftSettings),
        // The scheduler process: leader election and the periodic enqueuer (only the leader turns
        // schedules into jobs), and its health and metrics endpoint.
        .target(name: "Scheduler",
                dependencies: ["Contracts", "Jobs", "PostgresClient", "ClientSupport",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Hummingbird", package: "hummingbird"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: swiftSettings),

        .executableTarget(name: "fanflow",
                          dependencies: ["Apps", "Audiences", "Pipeline", "Members", "DeadLetters", "Contracts", "Runtime", "Gateway", "Workers", "Jobs", "Scheduler", "Storage", "Loyalty", "FlashSales",
                                         "Pushes", "FakePlatform", "Platforms", "AMQPClient", "PostgresClient", "RedisClient",
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
                    dependencies: ["Apps", "Audiences", "Contracts", "ClientSupport", "AMQPClient", "Gateway", "Jobs", "Loyalty", "Scheduler", "FlashSales", "Platforms",
                                   "Pushes", "PostgresClient", "RedisClient", "Workers",
                                   .product(name: "Crypto", package: "swift-crypto"),
                                   .product(name: "_CryptoExtras", package: "swift-crypto")],
                    swiftSettings: swiftSettings),
        .testTarget(name: "IntegrationTests",
                    dependencies: ["Apps", "Audiences", "Pipeline", "Members", "DeadLetters", "Contracts", "Runtime", "Workers", "Gateway", "Jobs", "Loyalty", "Scheduler", "FlashSales", "AMQPClient",
                                   "RedisClient", "Pushes", "FakePlatform", "Platforms",
                                   "PostgresClient", "Storage",
                                   .product(name: "Crypto", package: "swift-crypto"),
                                   .product(name: "_CryptoExtras", package: "swift-crypto"),
                                   .product(name: "HummingbirdTesting", package: "hummingbird")],
                    swiftSettings: swiftSettings),
    ]
)
