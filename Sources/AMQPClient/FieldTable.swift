import CRabbitMQ
#if canImport(Glibc)
import Glibc
#endif

/// Memory for the C structures of one call (field tables, property strings). rabbitmq-c keeps the
/// pointers it is given without copying, so everything stays allocated until the call returns and
/// the arena is dropped.
final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    deinit { for block in blocks { free(block) } }

    func bytes(_ text: String) -> amqp_bytes_t {
        bytes(Array(text.utf8))
    }

    func bytes(_ data: [UInt8]) -> amqp_bytes_t {
        guard !data.isEmpty, let block = malloc(data.count) else { return amqp_empty_bytes }
        blocks.append(block)
        data.withUnsafeBytes { block.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
        return amqp_bytes_t(len: data.count, bytes: block)
    }

    func table(_ fields: [String: AMQPFieldValue]) -> amqp_table_t {
        guard !fields.isEmpty else { return amqp_empty_table }
        let entries = allocate(amqp_table_entry_t.self, count: fields.count)
        for (index, (key, value)) in fields.sorted(by: { $0.key < $1.key }).enumerated() {
            entries[index] = amqp_table_entry_t(key: bytes(key), value: field(value))
        }
        return amqp_table_t(num_entries: Int32(fields.count), entries: entries)
    }

    private func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        switch value {
        case .string(let text):
            field.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            field.value.bytes = bytes(text)
        case .int(let number):
            field.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            field.value.i64 = number
        case .bool(let flag):
            field.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            field.value.boolean = flag ? 1 : 0
        case .double(let number):
            field.kind = UInt8(AMQP_FIELD_KIND_F64.rawValue)
            field.value.f64 = number
        case .bytes(let data):
            field.kind = UInt8(AMQP_FIELD_KIND_BYTES.rawValue)
            field.value.bytes = bytes(data)
        case .table(let nested):
            field.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            field.value.table = table(nested)
        case .array(let items):
            field.kind = UInt8(AMQP_FIELD_KIND_ARRAY.rawValue)
            let entries = allocate(amqp_field_value_t.self, count: max(items.count, 1))
            for (index, item) in items.enumerated() { entries[index] = self.field(item) }
            field.value.array = amqp_array_t(num_entries: Int32(items.count), entries: entries)
        case .void:
            field.kind = UInt8(AMQP_FIELD_KIND_VOID.rawValue)
        }
        return field
    }

    private func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        let block = calloc(count, MemoryLayout<T>.stride)!
        blocks.append(block)
        return block.bindMemory(to: T.self, capacity: count)
    }
}

/// The last string read from a frame field, reused while the bytes repeat. Consumer tag, exchange
/// and routing key are the same for message after message: no allocation, no hashing for them.
struct RepeatedString {
    private var bytes: [UInt8] = []
    private(set) var value = ""

    mutating func read(_ field: amqp_bytes_t) -> String {
        let same = field.len == bytes.count && (field.len == 0 || bytes.withUnsafeBytes { stored in
            guard let stored = stored.baseAddress, let incoming = field.bytes else { return false }
            return memcmp(stored, incoming, field.len) == 0
        })
        if !same {
            bytes = CValue.data(field)
            value = String(decoding: bytes, as: UTF8.self)
        }
        return value
    }
}

/// Copies C values out of rabbitmq-c's frame memory, which is reused after the next read.
enum CValue {
    static func string(_ bytes: amqp_bytes_t) -> String {
        guard bytes.len > 0, let base = bytes.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }

    static func data(_ bytes: amqp_bytes_t) -> [UInt8] {
        guard bytes.len > 0, let base = bytes.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: base, count: bytes.len))
    }

    static func table(_ table: amqp_table_t) -> [String: AMQPFieldValue] {
        var fields: [String: AMQPFieldValue] = [:]
        for index in 0..<Int(table.num_entries) {
            let entry = table.entries[index]
            fields[string(entry.key)] = value(entry.value)
        }
        return fields
    }

    static func value(_ field: amqp_field_value_t) -> AMQPFieldValue {
        switch UInt32(field.kind) {
        case AMQP_FIELD_KIND_UTF8.rawValue: return .string(string(field.value.bytes))
        case AMQP_FIELD_KIND_BYTES.rawValue: return .bytes(data(field.value.bytes))
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return .bool(field.value.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: return .int(Int64(field.value.i8))
        case AMQP_FIELD_KIND_U8.rawValue: return .int(Int64(field.value.u8))
        case AMQP_FIELD_KIND_I16.rawValue: return .int(Int64(field.value.i16))
        case AMQP_FIELD_KIND_U16.rawValue: return .int(Int64(field.value.u16))
        case AMQP_FIELD_KIND_I32.rawValue: return .int(Int64(field.value.i32))
        case AMQP_FIELD_KIND_U32.rawValue: return .int(Int64(field.value.u32))
        case AMQP_FIELD_KIND_I64.rawValue: return .int(field.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue, AMQP_FIELD_KIND_TIMESTAMP.rawValue:
            return .int(Int64(truncatingIfNeeded: field.value.u64))
        case AMQP_FIELD_KIND_F32.rawValue: return .double(Double(field.value.f32))
        case AMQP_FIELD_KIND_F64.rawValue: return .double(field.value.f64)
        case AMQP_FIELD_KIND_TABLE.rawValue: return .table(table(field.value.table))
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let array = field.value.array
            return .array((0..<Int(array.num_entries)).map { value(array.entries[$0]) })
        default: return .void
        }
    }

    static func properties(_ p: amqp_basic_properties_t) -> AMQPProperties {
        func has(_ flag: Int32) -> Bool { p._flags & amqp_flags_t(flag) != 0 }
        func text(_ flag: Int32, _ bytes: amqp_bytes_t) -> String? { has(flag) ? string(bytes) : nil }
        return AMQPProperties(
            messageID: text(AMQP_BASIC_MESSAGE_ID_FLAG, p.message_id),
            contentType: text(AMQP_BASIC_CONTENT_TYPE_FLAG, p.content_type),
            contentEncoding: text(AMQP_BASIC_CONTENT_ENCODING_FLAG, p.content_encoding),
            correlationID: text(AMQP_BASIC_CORRELATION_ID_FLAG, p.correlation_id),
            replyTo: text(AMQP_BASIC_REPLY_TO_FLAG, p.reply_to),
            type: text(AMQP_BASIC_TYPE_FLAG, p.type),
            appID: text(AMQP_BASIC_APP_ID_FLAG, p.app_id),
            timestamp: has(AMQP_BASIC_TIMESTAMP_FLAG) ? p.timestamp : nil,
            persistent: has(AMQP_BASIC_DELIVERY_MODE_FLAG) && p.delivery_mode == 2,
            priority: has(AMQP_BASIC_PRIORITY_FLAG) ? p.priority : nil,
            expirationMilliseconds: text(AMQP_BASIC_EXPIRATION_FLAG, p.expiration).flatMap { Int($0) },
            headers: has(AMQP_BASIC_HEADERS_FLAG) ? table(p.headers) : [:])
    }
}

extension CArena {
    func properties(_ properties: AMQPProperties) -> amqp_basic_properties_t {
        var p = amqp_basic_properties_t()
        var flags: Int32 = AMQP_BASIC_DELIVERY_MODE_FLAG
        p.delivery_mode = properties.persistent ? 2 : 1
        func set(_ value: String?, _ flag: Int32, _ field: inout amqp_bytes_t) {
            guard let value else { return }
            field = bytes(value)
            flags |= flag
        }
        set(properties.messageID, AMQP_BASIC_MESSAGE_ID_FLAG, &p.message_id)
        set(properties.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG, &p.content_type)
        set(properties.contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG, &p.content_encoding)
        set(properties.correlationID, AMQP_BASIC_CORRELATION_ID_FLAG, &p.correlation_id)
        set(properties.replyTo, AMQP_BASIC_REPLY_TO_FLAG, &p.reply_to)
        set(properties.type, AMQP_BASIC_TYPE_FLAG, &p.type)
        set(properties.appID, AMQP_BASIC_APP_ID_FLAG, &p.app_id)
        set(properties.expirationMilliseconds.map(String.init), AMQP_BASIC_EXPIRATION_FLAG, &p.expiration)
        if let timestamp = properties.timestamp {
            p.timestamp = timestamp
            flags |= AMQP_BASIC_TIMESTAMP_FLAG
        }
        if let priority = properties.priority {
            p.priority = priority
            flags |= AMQP_BASIC_PRIORITY_FLAG
        }
        if !properties.headers.isEmpty {
            p.headers = table(properties.headers)
            flags |= AMQP_BASIC_HEADERS_FLAG
        }
        p._flags = amqp_flags_t(flags)
        return p
    }
}
