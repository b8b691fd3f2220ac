import Foundation

/// Member levels by growth total (`PUT /admin/v1/levels`): each level starts at `minGrowth`; the
/// first starts at 0. Growth is never spent, so a level only rises as growth accrues.
public struct LevelTable: Codable, Sendable, Equatable {
    public struct Level: Codable, Sendable, Equatable {
        public var name: String
        public var minGrowth: Int64
        public init(name: String, minGrowth: Int64) {
            self.name = name
            self.minGrowth = minGrowth
        }
    }

    public var levels: [Level]

    public init(levels: [Level]) { self.levels = levels }

    /// The reference program's levels: registered 0–99, bronze 100–3999, silver 4000–9999, gold from 10000.
    public static let standard = LevelTable(levels: [
        Level(name: "registered", minGrowth: 0),
        Level(name: "bronze", minGrowth: 100),
        Level(name: "silver", minGrowth: 4000),
        Level(name: "gold", minGrowth: 10000),
    ])

    public func level(forGrowth growth: Int64) -> String {
        levels.last { $0.minGrowth <= growth }?.name ?? levels.first?.name ?? ""
    }

    public static func parse(json: [UInt8]) throws(RuleProblem) -> LevelTable {
        guard let table = try? JSONDecoder().decode(LevelTable.self, from: Data(json)) else {
            throw RuleProblem(#"body must be {"levels":[{"name":…,"minGrowth":…},…]}"#)
        }
        try table.validate()
        return table
    }

    public func validate() throws(RuleProblem) {
        guard (1...50).contains(levels.count) else { throw RuleProblem("levels must list 1-50 levels") }
        guard levels[0].minGrowth == 0 else { throw RuleProblem("the first level must start at minGrowth 0") }
        var names = Set<String>()
        for (index, level) in levels.enumerated() {
            guard (1...64).contains(level.name.count) else { throw RuleProblem("levels[\(index)].name must be 1-64 characters") }
            guard names.insert(level.name).inserted else { throw RuleProblem("level \(level.name) is listed twice") }
            if index > 0, level.minGrowth <= levels[index - 1].minGrowth {
                throw RuleProblem("levels must be in increasing minGrowth order")
            }
        }
    }
}
