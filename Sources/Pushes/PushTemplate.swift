import Contracts
import Foundation
import Mustache

/// A message template as the admin API takes it (`PUT /admin/v1/templates/{code}`): the platform's
/// template id, each of its fields as Mustache text rendered from member and event data, and where
/// the message leads (a link or a mini-program page). Every field is compiled when the template is
/// saved, and every name it uses must be one FanFlow fills in, so a typo is refused then, not
/// discovered as an empty field in a member's message.
public struct PushTemplate: Sendable, Equatable {
    public var code: String
    public var platform: String
    /// The official account (WeChat) or app (Alipay) that sends it.
    public var app: String
    public var templateID: String
    public var fields: [String: String]
    public var url: String?
    public var miniProgramAppID: String?
    public var miniProgramPage: String?

    public init(code: String, platform: String = "wechat", app: String, templateID: String, fields: [String: String], url: String? = nil,
                miniProgramAppID: String? = nil, miniProgramPage: String? = nil) {
        self.code = code
        self.platform = platform
        self.app = app
        self.templateID = templateID
        self.fields = fields
        self.url = url
        self.miniProgramAppID = miniProgramAppID
        self.miniProgramPage = miniProgramPage
    }

    /// The names a template may use: the member's, then the event's (what each trigger's event
    /// carries is listed in docs/architecture.md).
    public static let names: Set<String> = [
        "nickname", "openid", "memberId", "balance", "growth", "level",
        "points", "previousLevel", "scene", "event", "occurredAt",
        "saleId", "campaign", "sku", "quantity", "amount", "amountYuan", "payBy", "reservationId",
    ]

    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    public static let platforms: Set<String> = ["wechat", "alipay"]

    public static func isValidCode(_ code: String) -> Bool {
        (1...64).contains(code.utf8.count) && code.utf8.allSatisfy {
            ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 || $0 == 46
        }
    }

    static let bodyFields: Set<String> = ["platform", "appId", "templateId", "fields", "url", "miniProgram", "code"]

    /// Parses and checks an admin request body for the template `code`.
    public static func parse(code: String, json: [UInt8]) throws(Problem) -> PushTemplate {
        guard isValidCode(code) else { throw Problem("code must be 1-64 characters of [A-Za-z0-9._-]") }
        guard case .object(let body)? = try? JSONValue.parse(json) else { throw Problem("body must be a JSON object") }
        if let unknown = body.keys.sorted().first(where: { !bodyFields.contains($0) }) { throw Problem("unknown field \(unknown)") }
        let platform = body["platform"]?.string ?? "wechat"
        guard platforms.contains(platform) else { throw Problem("platform must be wechat or alipay") }
        guard let app = body["appId"]?.string, (1...64).contains(app.count) else { throw Problem("appId is required") }
        guard let templateID = body["templateId"]?.string, (1...128).contains(templateID.count) else { throw Problem("templateId is required") }
        guard case .object(let rawFields)? = body["fields"], !rawFields.isEmpty, rawFields.count <= 30 else {
            throw Problem("fields must be an object of 1-30 template fields, each a Mustache text")
        }
        var fields: [String: String] = [:]
        for (name, value) in rawFields {
            guard let text = value.string, text.count <= 1000 else { throw Problem("field \(name) must be a string of at most 1000 characters") }
            fields[name] = text
        }
        var template = PushTemplate(code: code, platform: platform, app: app, templateID: templateID, fields: fields, url: body["url"]?.string)
        if case .object(let mini)? = body["miniProgram"] {
            guard let appID = mini["appId"]?.string, let page = mini["pagePath"]?.string else {
                throw Problem("miniProgram needs appId and pagePath")
            }
            template.miniProgramAppID = appID
            template.miniProgramPage = page
        }
        try template.check()
        return template
    }

    /// Compiles every text and checks the names it uses.
    public func check() throws(Problem) {
        var texts = fields.map { ("field \($0.key)", $0.value) }
        if let url { texts.append(("url", url)) }
        if let miniProgramPage { texts.append(("miniProgram.pagePath", miniProgramPage)) }
        for (place, text) in texts {
            do { _ = try MustacheTemplate(string: Self.textPragma + text) } catch {
                throw Problem("\(place) is not valid Mustache: \(error)")
            }
            for name in try Self.names(in: text, place: place) where !Self.names.contains(name) {
                throw Problem("\(place) uses {{\(name)}}, which FanFlow does not fill in; known: \(Self.names.sorted().joined(separator: ", "))")
            }
        }
    }

    /// Plain text, not HTML: a member's nickname goes into the message as it is.
    static let textPragma = "{{% CONTENT_TYPE: TEXT}}"

    /// The names of a text's tags (`{{name}}`, `{{{name}}}`, `{{&name}}`, `{{#name}}`, `{{^name}}`);
    /// partials, delimiter changes and pragmas are refused.
    static func names(in text: String, place: String) throws(Problem) -> [String] {
        var names: [String] = []
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            rest = rest[open.upperBound...]
            guard let close = rest.range(of: "}}") else { break }
            var tag = rest[..<close.lowerBound].trimmingCharacters(in: .whitespaces)
            rest = rest[close.upperBound...]
            if rest.hasPrefix("}") { rest = rest.dropFirst() }
            guard let sigil = tag.first else { continue }
            switch sigil {
            case "!", "/": continue
            case ">", "<", "$", "=", "%": throw Problem("\(place): partials, blocks, delimiter changes and pragmas are not allowed")
            case "{", "&", "#", "^": tag = String(tag.dropFirst()).trimmingCharacters(in: .whitespaces)
            default: break
            }
            if tag != "." { names.append(tag) }
        }
        return names
    }

    /// The message for one member: every text rendered with `values`.
    public func render(_ values: [String: String]) -> RenderedMessage { renderer().render(values) }

    /// The template's texts compiled once, to render many members' messages. A broadcast batch of
    /// 1,000 used to compile every field for every member, on the two threads all of the worker's
    /// tasks share: a 10,000-member broadcast at 100/s stopped sending for up to 7 s while batches
    /// were rendered; compiled once per batch, its longest pause was 120 ms.
    public func renderer() -> Renderer {
        func compile(_ text: String) -> Renderer.Text {
            (try? MustacheTemplate(string: Self.textPragma + text)).map(Renderer.Text.compiled) ?? .verbatim(text)
        }
        return Renderer(template: self, fields: fields.mapValues(compile), url: url.map(compile), page: miniProgramPage.map(compile))
    }

    /// A ``PushTemplate`` with its texts compiled (``PushTemplate/renderer()``).
    public struct Renderer: Sendable {
        enum Text: Sendable {
            case compiled(MustacheTemplate)
            /// A text that does not compile (checked when saved, so only one saved before a check
            /// changed) is sent as it is.
            case verbatim(String)

            func render(_ values: [String: String]) -> String {
                switch self {
                case .compiled(let template): return template.render(values)
                case .verbatim(let text): return text
                }
            }
        }

        let template: PushTemplate
        let fields: [String: Text]
        let url: Text?
        let page: Text?

        /// The message for one member: every text rendered with `values`.
        public func render(_ values: [String: String]) -> RenderedMessage {
            RenderedMessage(templateID: template.templateID, fields: fields.mapValues { $0.render(values) }, url: url?.render(values),
                            miniProgramAppID: template.miniProgramAppID, miniProgramPage: page?.render(values))
        }
    }

    public var json: [String: JSONValue] {
        var body: [String: JSONValue] = ["code": .string(code), "platform": .string(platform), "appId": .string(app),
                                         "templateId": .string(templateID), "fields": .object(fields.mapValues(JSONValue.string)),
                                         "url": url.map(JSONValue.string) ?? .null]
        if let miniProgramAppID, let miniProgramPage {
            body["miniProgram"] = .object(["appId": .string(miniProgramAppID), "pagePath": .string(miniProgramPage)])
        }
        return body
    }
}
