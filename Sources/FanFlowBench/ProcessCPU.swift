import Foundation

/// CPU time of processes from `/proc`, in seconds: utime + stime of `/proc/<pid>/stat`, which the
/// kernel sums over every thread of the process, live or exited (beam.smp runs ~30 threads,
/// PostgreSQL one process per connection).
enum ProcStat {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    struct Times {
        /// The process's own threads.
        var own: Double
        /// Its children that exited and were waited for (a PostgreSQL backend that disconnected, an
        /// AOF rewrite Redis forked).
        var reapedChildren: Double
        var parent: Int32
    }

    static func times(_ pid: Int32) -> Times? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // Fields after the command (which may hold spaces and parentheses): state is field 3.
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is the state (3); ppid is 4; utime 14, stime 15, cutime 16, cstime 17.
        guard fields.count > 14, let ppid = Int32(fields[1]), let utime = Double(fields[11]), let stime = Double(fields[12]),
              let cutime = Double(fields[13]), let cstime = Double(fields[14]) else { return nil }
        return Times(own: (utime + stime) / ticksPerSecond, reapedChildren: (cutime + cstime) / ticksPerSecond, parent: ppid)
    }

    static func allPIDs() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
    }

    /// Every live descendant of `root` (not `root` itself).
    static func descendants(of root: Int32) -> [Int32] {
        var children: [Int32: [Int32]] = [:]
        for pid in allPIDs() { if let parent = times(pid)?.parent { children[parent, default: []].append(pid) } }
        var out: [Int32] = []
        var stack = children[root] ?? []
        while let pid = stack.popLast() {
            out.append(pid)
            stack += children[pid] ?? []
        }
        return out
    }

    static func commandLine(_ pid: Int32) -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
        return String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    /// The process listening on TCP `port` on this machine: the socket's inode from /proc/net/tcp(6),
    /// then the process holding a descriptor to it. Needs to read other processes' fd tables (root).
    static func listener(port: Int) -> Int32? {
        var inodes: Set<String> = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let columns = line.split(separator: " ")
                // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; the inode is column 10.
                guard columns.count > 9, columns[3] == "0A", let colon = columns[1].lastIndex(of: ":"),
                      Int(columns[1][columns[1].index(after: colon)...], radix: 16) == port else { continue }
                inodes.insert("socket:[\(columns[9])]")
            }
        }
        guard !inodes.isEmpty else { return nil }
        for pid in allPIDs() {
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { continue }
            for fd in fds {
                if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)"), inodes.contains(target) {
                    return pid
                }
            }
        }
        return nil
    }
}

/// A named set of processes whose CPU is read together: "gateway", "workers", "rabbitmq"…
struct CPUGroup: Sendable {
    enum Members: Sendable {
        /// These processes only.
        case pids([Int32])
        /// A process and every descendant, plus what its exited children used (RabbitMQ's beam.smp
        /// and its port programs, Redis and its forks).
        case tree(Int32)
        /// A PostgreSQL server's backends for one database and its own background processes (WAL
        /// writer, checkpointer, autovacuum…), without other databases' backends: the server is
        /// shared, and other users' queries are not this run's cost.
        case postgres(postmaster: Int32, database: String)
    }

    let name: String
    let members: Members

    /// CPU seconds used so far by the group's current members. A member that appears between two
    /// samples (a new backend) counts from zero; the caller diffs samples per pid.
    func sample() -> [Int32: Double] {
        var out: [Int32: Double] = [:]
        switch members {
        case .pids(let pids):
            for pid in pids { if let t = ProcStat.times(pid) { out[pid] = t.own } }
        case .tree(let root):
            if let t = ProcStat.times(root) { out[root] = t.own + t.reapedChildren }
            for pid in ProcStat.descendants(of: root) { if let t = ProcStat.times(pid) { out[pid] = t.own } }
        case .postgres(let postmaster, let database):
            if let t = ProcStat.times(postmaster) { out[postmaster] = t.own }
            for pid in ProcStat.descendants(of: postmaster) where Self.counts(ProcStat.commandLine(pid), database: database) {
                if let t = ProcStat.times(pid) { out[pid] = t.own }
            }
        }
        return out
    }

    /// `postgres: <user> <database> <host(port)> <state>` is a client backend; anything else under
    /// the postmaster (`postgres: checkpointer`, `postgres: walwriter`, `postgres: autovacuum worker
    /// <db>`…) is the server's own work.
    static func counts(_ title: String, database: String) -> Bool {
        let words = title.split(separator: " ")
        guard words.first == "postgres:", words.count >= 4,
              words[3].contains("(") || words[3] == "[local]" else { return true }
        return words[2] == database
    }
}

/// CPU of several groups between two moments, with the load generator's own beside them.
struct CPUMeter {
    let groups: [CPUGroup]
    private var first: [[Int32: Double]] = []
    private var selfFirst = 0.0
    private var startedAt = 0.0

    init(groups: [CPUGroup]) { self.groups = groups }

    static func selfSeconds() -> Double {
        // User and system time of every thread of this process, in nanoseconds.
        var t = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    mutating func start() {
        first = groups.map { $0.sample() }
        selfFirst = Self.selfSeconds()
        startedAt = now()
    }

    struct Reading: Codable, Sendable {
        var name: String
        var seconds: Double
    }

    /// CPU seconds per group since ``start()``, the bench's own last, and the wall seconds between.
    func stop(selfName: String = "load generator (this bench)") -> (groups: [Reading], wall: Double) {
        var out: [Reading] = []
        for (group, before) in zip(groups, first) {
            let after = group.sample()
            var used = 0.0
            for (pid, seconds) in after { used += max(0, seconds - (before[pid] ?? 0)) }
            // A descendant that exited in between is in its parent's reaped time with its whole life:
            // take back what it had used before the start.
            if case .tree = group.members { for (pid, seconds) in before where after[pid] == nil { used -= seconds } }
            used = max(0, used)
            out.append(Reading(name: group.name, seconds: used))
        }
        out.append(Reading(name: selfName, seconds: Self.selfSeconds() - selfFirst))
        return (out, now() - startedAt)
    }
}

/// The shared servers' processes, found by the ports their URLs name, and the bench's own processes
/// by `--pids name=1,2,3`.
enum CPUGroups {
    static func port(of url: String, default fallback: Int) -> Int {
        URLComponents(string: url)?.port ?? fallback
    }

    static func database(of url: String) -> String {
        let path = URLComponents(string: url)?.path ?? ""
        return String(path.drop { $0 == "/" })
    }

    /// `name=pid,pid` options into groups, then RabbitMQ, Redis and PostgreSQL from the environment.
    static func make(processes: [String], servers: Bool) throws -> [CPUGroup] {
        var groups: [CPUGroup] = []
        for option in processes {
            // The last "=": a name may hold one ("worker (points=2)").
            guard let equals = option.lastIndex(of: "=") else { throw BenchError("--pids wants name=pid[,pid…], got \(option)") }
            let list = option[option.index(after: equals)...].split(separator: ",")
            let pids = list.compactMap { Int32($0) }
            guard !pids.isEmpty, pids.count == list.count else { throw BenchError("--pids \(option) names no pid or a bad one") }
            groups.append(CPUGroup(name: String(option[..<equals]), members: .pids(pids)))
        }
        guard servers else { return groups }
        let env = ProcessInfo.processInfo.environment
        let amqp = port(of: env["FANFLOW_AMQP_URL"] ?? "", default: 5672)
        let redis = port(of: env["FANFLOW_REDIS_URL"] ?? "", default: 6379)
        let databaseURL = env["FANFLOW_DATABASE_URL"] ?? ""
        let pg = port(of: databaseURL, default: 5432)
        guard let beam = ProcStat.listener(port: amqp) else { throw BenchError("no process listens on the AMQP port \(amqp)") }
        guard let redisPID = ProcStat.listener(port: redis) else { throw BenchError("no process listens on the Redis port \(redis)") }
        guard let postmaster = ProcStat.listener(port: pg) else { throw BenchError("no process listens on the PostgreSQL port \(pg)") }
        groups.append(CPUGroup(name: "rabbitmq (beam.smp and children)", members: .tree(beam)))
        groups.append(CPUGroup(name: "redis", members: .tree(redisPID)))
        groups.append(CPUGroup(name: "postgresql (\(database(of: databaseURL)) backends + server processes)",
                               members: .postgres(postmaster: postmaster, database: database(of: databaseURL))))
        return groups
    }
}
