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

/// A runtime under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// hatchery, `SchedulePolicy::Fifo`.
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

/// One measured quantity of a workload; every metric is "lower is better".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Nanoseconds per operation (the workload's `op` names the operation).
    NsPer(&'static str),
    /// Milliseconds of wall time beyond the sleep.
    OverheadMs,
    /// Peak bytes per sleeping task.
    BytesPerTask,
}

impl Metric {
    /// The unit column of the result tables.
    pub fn unit(self) -> String {
        match self {
            Metric::NsPer(op) => format!("ns/{op}"),
            Metric::OverheadMs => "ms wall overhead beyond 1 s".to_string(),
            Metric::BytesPerTask => "bytes per sleeping task".to_string(),
        }
    }

    /// A short unit for the progress lines.
    pub fn short_unit(self) -> String {
        match self {
            Metric::NsPer(op) => format!("ns/{op}"),
            Metric::OverheadMs => "ms".to_string(),
            Metric::BytesPerTask => "B/task".to_string(),
        }
    }
}

/// A workload: the same code shape on every runtime, checked by a checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Spawn n children returning `i`, keep the handles, await them in order.
    SpawnJoin,
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
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 8] = [
        Workload::SpawnJoin,
        Workload::SpawnNested,
        Workload::Pingpong,
        Workload::PingpongRendezvous,
        Workload::MpscFanin,
        Workload::Timers,
        Workload::TimeoutCancel,
        Workload::CancelNursery,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SpawnJoin => "spawn_join",
            Workload::SpawnNested => "spawn_nested",
            Workload::Pingpong => "pingpong",
            Workload::PingpongRendezvous => "pingpong_rendezvous",
            Workload::MpscFanin => "mpsc_fanin",
            Workload::Timers => "timers",
            Workload::TimeoutCancel => "timeout_cancel",
            Workload::CancelNursery => "cancel_nursery",
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

    /// The full-size n (tasks; leaves for `spawn_nested`; round trips for the pingpongs;
    /// messages for `mpsc_fanin`).
    pub fn full_n(self) -> u64 {
        match self {
            Workload::SpawnJoin
            | Workload::SpawnNested
            | Workload::Pingpong
            | Workload::PingpongRendezvous
            | Workload::MpscFanin => 1_000_000,
            Workload::Timers | Workload::TimeoutCancel | Workload::CancelNursery => 100_000,
        }
    }

    /// What the workload reports, in order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Workload::SpawnJoin => &[Metric::NsPer("task")],
            Workload::SpawnNested => &[Metric::NsPer("leaf")],
            Workload::Pingpong | Workload::PingpongRendezvous => &[Metric::NsPer("round trip")],
            Workload::MpscFanin => &[Metric::NsPer("message")],
            Workload::Timers => &[Metric::OverheadMs, Metric::BytesPerTask],
            Workload::TimeoutCancel => &[Metric::NsPer("task")],
            Workload::CancelNursery => &[Metric::NsPer("child")],
        }
    }

    /// Whether each measurement runs in a fresh process (its figures include the peak RSS).
    pub fn fresh_process(self) -> bool {
        self == Workload::Timers
    }
}

/// Sum of `0..n`: the checksum of the workloads whose children return `i`.
pub fn sum_below(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Panics (failing the measurement loudly) when a checksum is wrong.
pub fn check(what: &str, got: u64, want: u64) {
    assert_eq!(got, want, "{what}: checksum mismatch (got {got}, want {want})");
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
