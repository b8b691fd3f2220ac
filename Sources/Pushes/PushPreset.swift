import Contracts
import Foundation

/// The pushes FanFlow ships for one app (`POST /admin/v1/push-triggers/presets/standard`): a
/// template and its trigger for each message a loyalty program sends, with field texts ready to
/// use. The brand names the platform template it applied for, per message; messages it names no
/// template for are left out. Each channel scene can have its own welcome line, which then
/// replaces the general welcome for follows through that scene's QR code.
///
/// Field names are those of the common industry templates (`first`, `keyword1`, `keyword2`,
/// `remark`); a template whose fields differ is edited afterwards with `PUT /admin/v1/templates`.
public struct PushPreset: Sendable, Equatable {
    public let templates: [PushTemplate]
    public let triggers: [PushTrigger]

    /// One shipped message: the event that sends it and its field texts.
    struct Message: Sendable {
        let name: String
        let event: @Sendable (_ platform: String) -> String
        let fields: [String: String]
    }

    static let messages: [Message] = [
        Message(name: "welcome", event: { "\($0).subscribe" }, fields: [
            "first": "{{#nickname}}{{nickname}}，{{/nickname}}欢迎加入会员！",
            "keyword1": "{{memberId}}", "keyword2": "{{balance}} 积分", "remark": "每日签到、发帖、分享都能赚积分",
        ]),
        Message(name: "points-granted", event: { _ in "fanflow.points.granted" }, fields: [
            "first": "积分到账 +{{points}}", "keyword1": "{{points}}", "keyword2": "{{balance}}", "remark": "{{occurredAt}}",
        ]),
        Message(name: "level-changed", event: { _ in "fanflow.member.level_changed" }, fields: [
            "first": "恭喜升级为 {{level}}", "keyword1": "{{previousLevel}}", "keyword2": "{{level}}", "remark": "成长值 {{growth}}",
        ]),
        Message(name: "reservation-made", event: { _ in "fanflow.flashsale.reserved" }, fields: [
            "first": "抢购成功：{{campaign}}", "keyword1": "{{quantity}} 件", "keyword2": "¥{{amountYuan}}",
            "remark": "请在 {{payBy}} 前完成支付，逾期自动取消",
        ]),
        Message(name: "reservation-expiring", event: { _ in PushTrigger.paymentReminderEvent }, fields: [
            "first": "您抢到的 {{campaign}} 即将失效", "keyword1": "{{quantity}} 件", "keyword2": "¥{{amountYuan}}",
            "remark": "请在 {{payBy}} 前完成支付",
        ]),
        Message(name: "points-matured", event: { _ in "fanflow.points.matured" }, fields: [
            "first": "购物积分已到账 +{{points}}", "keyword1": "{{points}}", "keyword2": "{{balance}}", "remark": "感谢您的支持",
        ]),
    ]

    public static var names: [String] { messages.map(\.name) }

    static let bodyFields: Set<String> = ["platform", "appId", "templates", "url", "scenes"]

    /// Parses `{"platform"?, "appId", "templates": {name: platform template id}, "url"?, "scenes"?: {scene: welcome line}}`.
    public static func parse(json: [UInt8]) throws(PushTemplate.Problem) -> PushPreset {
        guard case .object(let body)? = try? JSONValue.parse(json) else { throw PushTemplate.Problem("body must be a JSON object") }
        if let unknown = body.keys.sorted().first(where: { !bodyFields.contains($0) }) { throw PushTemplate.Problem("unknown field \(unknown)") }
        let platform = body["platform"]?.string ?? "wechat"
        guard PushTemplate.platforms.contains(platform) else { throw PushTemplate.Problem("platform must be wechat or alipay") }
        guard let app = body["appId"]?.string, PushTemplate.isValidCode(app) else {
            throw PushTemplate.Problem("appId is required (1-64 characters of [A-Za-z0-9._-])")
        }
        guard case .object(let ids)? = body["templates"], !ids.isEmpty else {
            throw PushTemplate.Problem("templates must name a platform template id for some of: \(names.joined(separator: ", "))")
        }
        if let unknown = ids.keys.sorted().first(where: { !names.contains($0) }) {
            throw PushTemplate.Problem("templates.\(unknown) is not a shipped message; known: \(names.joined(separator: ", "))")
        }
        var scenes: [String: String] = [:]
        switch body["scenes"] {
        case nil, .null?: break
        case .object(let given)?:
            guard ids["welcome"] != nil else { throw PushTemplate.Problem("scenes need templates.welcome") }
            for (scene, line) in given {
                guard PushTemplate.isValidCode(scene), let text = line.string, (1...200).contains(text.count) else {
                    throw PushTemplate.Problem("scenes.\(scene) must be a welcome line of 1-200 characters, the scene 1-64 of [A-Za-z0-9._-]")
                }
                scenes[scene] = text
            }
        default: throw PushTemplate.Problem("scenes must be an object of scene: welcome line")
        }
        let url = body["url"]?.string
        var templates: [PushTemplate] = []
        var triggers: [PushTrigger] = []
        for message in messages {
            guard let value = ids[message.name] else { continue }
            guard let templateID = value.string, (1...128).contains(templateID.count) else {
                throw PushTemplate.Problem("templates.\(message.name) must be the platform's template id")
            }
            let code = "\(app).\(message.name)"
            let template = PushTemplate(code: code, platform: platform, app: app, templateID: templateID, fields: message.fields, url: url)
            try template.check()
            templates.append(template)
            triggers.append(PushTrigger(code: code, event: message.event(platform), template: code))
            guard message.name == "welcome" else { continue }
            for (scene, line) in scenes.sorted(by: { $0.key < $1.key }) {
                var fields = message.fields
                fields["first"] = line
                let sceneCode = "\(code).\(scene)"
                guard PushTemplate.isValidCode(sceneCode) else { throw PushTemplate.Problem("appId and scene \(scene) make a code over 64 characters") }
                let sceneTemplate = PushTemplate(code: sceneCode, platform: platform, app: app, templateID: templateID, fields: fields, url: url)
                try sceneTemplate.check()
                templates.append(sceneTemplate)
                triggers.append(PushTrigger(code: sceneCode, event: message.event(platform), conditions: ["scene": scene], template: sceneCode))
            }
        }
        return PushPreset(templates: templates, triggers: triggers)
    }
}
