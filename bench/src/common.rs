//! What every runtime module shares: the runtimes, the workloads, checksums and `/proc` readings.

use std::time::Duration;

/// How long every sleeping child of `timers` sleeps.
pub const TIMER_SLEEP: Duration = Duration::from_secs(1);
/// The timeout of `timeout_cancel`.
pub const SHORT_TIMEOUT: Duration = Duration::from_millis(1);
/// A sleep that never ends within a benchmark (`timeout_cancel`, `cancel_nursery`).
pub const LONG_SLEEP: Duration = Duration::from_secs(3600);
/// Children per parent in `spawn_nested`.
pub const NESTED_CHILDREN: u64 = 1_000;
/// The capacity of both channels of `pingpong` (`pingpong_rendezvous` uses 0).
pub const PINGPONG_CAPACITY: usize = 1;
/// Producers in `mpsc_fanin`; each sends n / `FANIN_PRODUCERS` values.
pub const FANIN_PRODUCERS: u64 = 100;
/// The capacity of the `mpsc_fanin` channel.
pub const FANIN_CAPACITY: usize = 1024;
/// Concurrent connections of `tcp_echo`; each makes n / `ECHO_CONNS` round trips.
pub const ECHO_CONNS: u64 = 50;
/// The size of one `tcp_echo` message (and of the one message per `idle_conns` connection).
pub const ECHO_MSG: usize = 64;
/// The read buffer of every echo handler (all runtimes): bigger than a message, so that a read
/// of one message is a short read, as in any server that reads into a buffer of a few KiB.
pub const ECHO_BUF: usize = 1024;
/// How long an echo server waits after its last `accept` before it measures and lets the
/// client go: time for every handler to reach its first read and park there.
pub const SETTLE: Duration = Duration::from_millis(100);
/// `wrk` connections of `http_wrk` (`wrk -t1 -c50`).
pub const WRK_CONNS: u64 = 50;
/// The path `http_wrk` requests.
pub const HTTP_PATH: &str = "/alice";
/// The body every responder must answer [`HTTP_PATH`] with.
pub const HTTP_BODY: &str = "Hello, alice!";

/// A runtime under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// hatchery, default `Builder`.
    Hatchery,
    /// tokio current_thread runtime, `tokio::spawn`.
    Tokio,
    /// tokio current_thread runtime inside a `LocalSet`, `spawn_local`.
    TokioLocal,
    /// smol: `async_executor::LocalExecutor` driven by `async_io::block_on`.
    Smol,
}

impl Runtime {
    /// Every runtime, in the order of the result columns.
    pub const ALL: [Runtime; 4] = [Runtime::Hatchery, Runtime::Tokio, Runtime::TokioLocal, Runtime::Smol];

    /// The name used on the command line (`--child`).
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Hatchery => "hatchery",
            Runtime::Tokio => "tokio",
            Runtime::TokioLocal => "tokio-local",
            Runtime::Smol => "smol",
        }
    }

    /// The column header in the result tables.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::TokioLocal => "tokio LocalSet",
            other => other.name(),
        }
    }

    /// Parses [`Runtime::name`].
    pub fn from_name(name: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// One measured quantity of a workload; "lower is better" except for the rates
/// ([`Metric::higher_is_better`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Nanoseconds per operation (the workload's `op` names the operation).
    NsPer(&'static str),
    /// Milliseconds of wall time beyond the sleep.
    OverheadMs,
    /// Peak bytes per sleeping task.
    BytesPerTask,
    /// Peak bytes per spawned task, its handle included.
    PeakBytesPerSpawn,
    /// The same, less the size of the task's handle.
    PeakBytesBeyondHandle,
    /// Operations per second (higher is better); names the operation, plural.
    PerSec(&'static str),
    /// Server CPU time (user + sys) per operation, in microseconds.
    CpuUsPer(&'static str),
    /// Server system calls per operation.
    SyscallsPer(&'static str),
    /// Resident bytes per idle connection, once all are connected (`VmRSS`).
    BytesPerConn,
    /// Peak bytes per idle connection (`VmHWM`).
    PeakBytesPerConn,
    /// A latency percentile, in microseconds.
    LatencyUs(&'static str),
}

impl Metric {
    /// The unit column of the result tables.
    pub fn unit(self) -> String {
        match self {
            Metric::NsPer(op) => format!("ns/{op}"),
            Metric::OverheadMs => "ms wall overhead beyond 1 s".to_string(),
            Metric::BytesPerTask => "bytes per sleeping task".to_string(),
            Metric::PeakBytesPerSpawn => "peak bytes per task, handle included".to_string(),
            Metric::PeakBytesBeyondHandle => "peak bytes per task beyond its handle".to_string(),
            Metric::PerSec(ops) => format!("{ops}/s (higher is better)"),
            Metric::CpuUsPer(op) => format!("server CPU us/{op}"),
            Metric::SyscallsPer(op) => format!("server syscalls/{op}"),
            Metric::BytesPerConn => "bytes per idle connection (VmRSS)".to_string(),
            Metric::PeakBytesPerConn => "peak bytes per idle connection (VmHWM)".to_string(),
            Metric::LatencyUs(p) => format!("{p} latency us"),
        }
    }

    /// A short unit for the progress lines.
    pub fn short_unit(self) -> String {
        match self {
            Metric::NsPer(op) => format!("ns/{op}"),
            Metric::OverheadMs => "ms".to_string(),
            Metric::BytesPerTask => "B/task".to_string(),
            Metric::PeakBytesPerSpawn => "peak B/task".to_string(),
            Metric::PeakBytesBeyondHandle => "peak B/task beyond handle".to_string(),
            Metric::PerSec(ops) => format!("{ops}/s"),
            Metric::CpuUsPer(op) => format!("us CPU/{op}"),
            Metric::SyscallsPer(op) => format!("syscalls/{op}"),
            Metric::BytesPerConn => "B/conn".to_string(),
            Metric::PeakBytesPerConn => "peak B/conn".to_string(),
            Metric::LatencyUs(p) => format!("us {p}"),
        }
    }

    /// Whether a bigger figure is the better one (rates); every other metric is a cost.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::PerSec(_))
    }
}

/// A workload: the same code shape on every runtime, checked by a checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Spawn n children returning `i`, keep the handles, await them in order.
    SpawnJoin,
    /// `SpawnJoin` in a fresh process, for its peak memory per task.
    SpawnMemory,
    /// n/1000 parents each spawn 1000 children and await them.
    SpawnNested,
    /// n round trips between two tasks over two capacity-1 channels.
    Pingpong,
    /// `Pingpong` over rendezvous (capacity 0) channels; hatchery only, since neither
    /// `tokio::sync::mpsc` nor `async-channel` has capacity 0.
    PingpongRendezvous,
    /// 100 producers send n values in all into one bounded(1024) channel; one consumer sums.
    MpscFanin,
    /// n children each sleep 1 s, concurrently.
    Timers,
    /// n children each run a 1 ms timeout around a 1-hour sleep.
    TimeoutCancel,
    /// n children sleep for an hour; the group is cancelled once they are all parked.
    CancelNursery,
    /// n 64-byte round trips (50 connections) from a blocking client in a child process
    /// against an echo server on the runtime.
    TcpEcho,
    /// n idle connections to one echo server: memory per connection, then one echo each.
    IdleConns,
    /// `wrk -t1 -c50 -d{n}s` against a minimal HTTP/1.1 keep-alive responder.
    HttpWrk,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 12] = [
        Workload::SpawnJoin,
        Workload::SpawnMemory,
        Workload::SpawnNested,
        Workload::Pingpong,
        Workload::PingpongRendezvous,
        Workload::MpscFanin,
        Workload::Timers,
        Workload::TimeoutCancel,
        Workload::CancelNursery,
        Workload::TcpEcho,
        Workload::IdleConns,
        Workload::HttpWrk,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SpawnJoin => "spawn_join",
            Workload::SpawnMemory => "spawn_memory",
            Workload::SpawnNested => "spawn_nested",
            Workload::Pingpong => "pingpong",
            Workload::PingpongRendezvous => "pingpong_rendezvous",
            Workload::MpscFanin => "mpsc_fanin",
            Workload::Timers => "timers",
            Workload::TimeoutCancel => "timeout_cancel",
            Workload::CancelNursery => "cancel_nursery",
            Workload::TcpEcho => "tcp_echo",
            Workload::IdleConns => "idle_conns",
            Workload::HttpWrk => "http_wrk",
        }
    }

    /// Parses [`Workload::name`].
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The runtimes that run this workload (a subset of [`Runtime::ALL`], in its order).
    pub fn runtimes(self) -> &'static [Runtime] {
        match self {
            Workload::PingpongRendezvous => &[Runtime::Hatchery],
            _ => &Runtime::ALL,
        }
    }

    /// The full-size n (tasks; leaves for `spawn_nested`; round trips for the pingpongs and
    /// `tcp_echo`; messages for `mpsc_fanin`; connections for `idle_conns`; seconds of `wrk`
    /// for `http_wrk`).
    pub fn full_n(self) -> u64 {
        match self {
            Workload::SpawnJoin
            | Workload::SpawnMemory
            | Workload::SpawnNested
            | Workload::Pingpong
            | Workload::PingpongRendezvous
            | Workload::MpscFanin => 1_000_000,
            Workload::Timers | Workload::TimeoutCancel | Workload::CancelNursery | Workload::TcpEcho => {
                100_000
            }
            Workload::IdleConns => 10_000,
            Workload::HttpWrk => 5,
        }
    }

    /// What the workload reports, in order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Workload::SpawnJoin => &[Metric::NsPer("task")],
            Workload::SpawnMemory => &[Metric::PeakBytesPerSpawn, Metric::PeakBytesBeyondHandle],
            Workload::SpawnNested => &[Metric::NsPer("leaf")],
            Workload::Pingpong | Workload::PingpongRendezvous => &[Metric::NsPer("round trip")],
            Workload::MpscFanin => &[Metric::NsPer("message")],
            Workload::Timers => &[Metric::OverheadMs, Metric::BytesPerTask],
            Workload::TimeoutCancel => &[Metric::NsPer("task")],
            Workload::CancelNursery => &[Metric::NsPer("child")],
            Workload::TcpEcho => &[
                Metric::PerSec("round trips"),
                Metric::CpuUsPer("round trip"),
                Metric::SyscallsPer("round trip"),
            ],
            Workload::IdleConns => &[Metric::BytesPerConn, Metric::PeakBytesPerConn],
            Workload::HttpWrk => &[
                Metric::PerSec("requests"),
                Metric::LatencyUs("p50"),
                Metric::LatencyUs("p99"),
                Metric::CpuUsPer("request"),
            ],
        }
    }

    /// Whether each measurement runs in a fresh process: its figures include the peak RSS, or
    /// it is a server whose process-wide CPU time and system calls are counted.
    pub fn fresh_process(self) -> bool {
        matches!(self, Workload::SpawnMemory | Workload::Timers | Workload::TcpEcho | Workload::IdleConns)
    }
}

/// The address every echo server binds: 127.0.0.1, port 0 (the OS picks one).
pub fn localhost() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

/// Sum of `0..n`: the checksum of the workloads whose children return `i`.
pub fn sum_below(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Panics (failing the measurement loudly) when a checksum is wrong.
pub fn check(what: &str, got: u64, want: u64) {
    assert_eq!(got, want, "{what}: checksum mismatch (got {got}, want {want})");
}

/// One measurement: a value per metric of the workload (`NaN` for a metric not measured this
/// time, such as system calls without `--syscalls`), and for `tcp_echo` with `--syscalls` the
/// server's system calls per round trip by name: (name, calls, failed calls; `NaN` when the
/// tracer does not tell).
#[derive(Debug, Default)]
pub struct Sample {
    pub values: Vec<f64>,
    pub syscalls: PerOp,
}

/// System calls per operation by name: (name, calls, failed calls or `NaN`).
pub type PerOp = Vec<(String, f64, f64)>;

impl Sample {
    pub fn of(values: Vec<f64>) -> Sample {
        Sample { values, syscalls: Vec::new() }
    }
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("cannot read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// What hatchery's accepted streams get besides `TCP_NODELAY` (which the peers set through
/// their own API): `TCP_NOTSENT_LOWAT` of 16 KiB on Linux, so that every runtime's server
/// sockets are configured alike. Best effort, as in hatchery.
pub fn like_hatchery_stream(s: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    {
        let lowat: libc::c_int = 16 * 1024;
        // SAFETY: a valid descriptor (borrowed from a live socket) and a correctly sized int
        // option value; setsockopt reads `size_of::<c_int>()` bytes from it.
        let _ = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&raw const lowat).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = s;
}
