import Audiences
import Contracts
import Foundation
import Hummingbird

/// `GET /admin/v1/members/{id}/portrait`: a member at a glance. Thin: the id is checked, the
/// portrait read (a merged member's id reads the member it became) and written as JSON.
extension Gateway {
    func addPortraitAdminRoutes(_ admin: RouterGroup<GatewayRequestContext>) {
        let portraits = PortraitReader(database: database, timeZone: configuration.timeZone)
        admin.get("/members/:id/portrait") { _, context in
            let id = try memberID(context)
            guard let portrait = try await stored({ try await portraits.portrait(of: id) }) else { throw Self.unknownMember(id) }
            return Response.json(portrait.json)
        }
    }
}

extension MemberPortrait {
    var json: [String: JSONValue] {
        func time(_ date: Date?) -> JSONValue { date.map { .string(RFC3339.format($0)) } ?? .null }
        return [
            "member": .object(["id": .integer(member.id), "nickname": .string(member.nickname), "phoneBound": .bool(member.phoneBound),
                               "createdAt": time(member.createdAt)]),
            "identities": .array(identities.map { identity in
                .object(["platform": .string(identity.platform.rawValue), "app": .string(identity.app), "openid": .string(identity.openid),
                         "unionid": identity.unionid.map(JSONValue.string) ?? .null])
            }),
            "attributes": .object(attributes.mapValues { attribute in
                .object(["value": attribute.value, "source": .string(attribute.source), "updatedAt": time(attribute.updatedAt)])
            }),
            "activity": .object(["firstSeen": time(activity.firstSeen), "lastSeen": time(activity.lastSeen),
                                 "activeDaysLast30": .integer(Int64(activity.activeDaysLast30)),
                                 "hours": .array(activity.hours.map { .integer(Int64($0)) })]),
            "interests": .array(interests.map { interest in
                .object(["topic": .string(interest.topic), "weight": .number(interest.weight),
                         "sources": .array(interest.sources.map { .string($0.rawValue) })])
            }),
            "tags": .array(tags.map(\.json)),
            "loyalty": .object(["points": .integer(loyalty.points), "growth": .integer(loyalty.growth), "level": .string(loyalty.level)]),
            "sample": .object(["from": time(sample.from), "to": time(sample.to), "events": .integer(Int64(sample.events)),
                               "truncated": .bool(sample.truncated)]),
        ]
    }
}
