import HTTPTypes

/// Header names of the public contract, spelled once.
extension HTTPField.Name {
    static let fanflowApp = HTTPField.Name("X-FanFlow-App")!
    static let fanflowTimestamp = HTTPField.Name("X-FanFlow-Timestamp")!
    static let fanflowSignature = HTTPField.Name("X-FanFlow-Signature")!
    static let qqSignature = HTTPField.Name("X-Signature-Ed25519")!
    static let qqTimestamp = HTTPField.Name("X-Signature-Timestamp")!
    static let qqBotAppID = HTTPField.Name("X-Bot-Appid")!
    static let wechatPayTimestamp = HTTPField.Name("Wechatpay-Timestamp")!
    static let wechatPayNonce = HTTPField.Name("Wechatpay-Nonce")!
    static let wechatPaySignature = HTTPField.Name("Wechatpay-Signature")!
    static let wechatPaySerial = HTTPField.Name("Wechatpay-Serial")!
}
