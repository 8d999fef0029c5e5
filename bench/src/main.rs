//! `hatchery-bench`: hatchery against the runtimes its users would pick instead.
//!
//! Every workload runs on four runtimes in one process run (except `pingpong_rendezvous`, on
//! hatchery only), alternating runtimes within each repetition (the order rotates from one
//! repetition to the next):
//!
//! - **hatchery**: `Builder::new().run(..)`, the defaults a user gets (Trio's coin-flip batch
//!   order, a yield budget of 64); children are spawned into a nursery, whose own cost is
//!   included;
//! - **tokio**: a `current_thread` runtime with the time driver, `tokio::spawn`;
//! - **tokio LocalSet**: the same runtime inside a `LocalSet`, `spawn_local`;
//! - **smol**: an `async_executor::LocalExecutor` driven by `async_io::block_on`.
//!
//! # Workloads (same code shape on every runtime; each checks a checksum)
//!
//! | workload | n | measures |
//! |---|---|---|
//! | `spawn_join` | 1,000,000 | spawn a child returning `i: u64`, keep its handle; then await all handles in order and sum them. ns per task |
//! | `spawn_memory` | 1,000,000 | `spawn_join` in a fresh child process: peak bytes per task = (`VmHWM` at the end - `VmRSS` before) / n, the handle (kept in a `Vec` until awaited) included, and the same less the size of the handle (hatchery's `JoinHandle<u64>` is 48 bytes, tokio's `JoinHandle` and async-executor's `Task` 8) |
//! | `spawn_nested` | 1,000,000 leaves | 1,000 parents each spawn 1,000 children and await them (nested nurseries for hatchery). ns per leaf |
//! | `pingpong` | 1,000,000 round trips | task B (started first) receives each value on a capacity-1 channel and sends it back on another; task A sends `i`, receives it back and sums. hatchery `channel(1)`, tokio `sync::mpsc::channel(1)`, smol `async_channel::bounded(1)`. ns per round trip |
//! | `pingpong_rendezvous` | 1,000,000 round trips | `pingpong` over two capacity-0 (rendezvous) channels, **hatchery only** (tokio's mpsc and async-channel have no capacity 0; their cells show `-`). Naming `pingpong` on the command line runs it too. ns per round trip |
//! | `mpsc_fanin` | 1,000,000 messages | 100 producers each send 10,000 `u64` into one bounded(1024) channel; one consumer task (started first) sums until the channel ends, when the last sender is dropped. ns per message |
//! | `timers` | 100,000 | children each sleep 1 s on the real clock, all concurrently. Wall overhead beyond 1 s, and peak bytes per sleeping task = (`VmHWM` at the end - `VmRSS` before) / n. Each measurement runs in a fresh child process (the binary re-executes itself with `--child`) so that the process-wide high-water marks do not mix |
//! | `timeout_cancel` | 100,000 | children each run a 1 ms timeout around a 1-hour sleep (hatchery `move_on_after`, tokio `time::timeout`, smol `future::or` of two `Timer`s). Wall / n |
//! | `cancel_nursery` | 100,000 | children each sleep 1 hour; once all are parked, the group is cancelled: hatchery cancels the nursery's scope from its body (after `testing::wait_all_tasks_blocked`), tokio calls `JoinSet::abort_all` and drains the set, smol drops the `Task`s and waits until every future is dropped. Time from the cancel to the end, per child |
//! | `tcp_echo` | 100,000 round trips | an echo server on 127.0.0.1:0 (one task per connection, 1 KiB read buffer; hatchery children in a nursery, tokio `net::TcpListener` with `spawn`/`spawn_local`, smol `Async<TcpListener>` on the `LocalExecutor`) in a fresh process; a blocking std client in a child process makes 2,000 round trips of 64 bytes on each of 50 connections, one thread per connection, and checks every echo. Round trips/s (higher is better), server CPU (user + sys, `getrusage`) per round trip, and with `--syscalls` server system calls per round trip, by name too (see `echo.rs` and `syscalls.rs`) |
//! | `idle_conns` | 10,000 connections | the same echo server in a fresh process; the client (a child process, one thread) opens n connections and holds them while every handler parks in its read. Bytes per connection = (`VmRSS`, and `VmHWM`, once all are parked - `VmRSS` before the runtime) / n; then one 64-byte echo on every connection, checked |
//! | `http_wrk` | 5 s | `wrk -t1 -c50 -d5s --latency` against a minimal HTTP/1.1 keep-alive responder in its own process: hatchery's `examples/hello_http` (built with cargo), and the same responder written here for each peer (hand-written parsing, no hyper). Requests/s (higher is better), p50 and p99 latency, server CPU per request. Skipped, with a message, if `wrk` is not installed (see `http.rs`) |
//!
//! Children that nobody awaits (`timers`, `timeout_cancel`, `cancel_nursery`, the echoing task
//! of `pingpong`, the producers of `mpsc_fanin`) are started with `Nursery::start_soon` on
//! hatchery (the nursery waits for them); the peers keep a handle per task to wait on, since they
//! have no other way to.
//!
//! Every figure is "lower is better" except the rates (`/s`), where a ratio hatchery / peer
//! above 1 means hatchery is ahead and the best peer is the fastest. The report gives
//! per-repetition samples, then the median (with min and max) per runtime, the ratio hatchery /
//! each peer and hatchery / best peer, and finally a markdown table to paste into `README.md`.
//!
//! # Running
//!
//! ```text
//! cargo run --release -p hatchery-bench -- [--reps N] [--quick] [--timeout SECS] [--syscalls]
//!     [--strace] [--echo-conns N] [--hello-http PATH] [workload...]
//! ```
//!
//! - `--reps N`: repetitions per runtime (default 5); the report quotes medians;
//! - `--quick`: divide every n by 10, for a fast smoke run (`mpsc_fanin` keeps 100 producers,
//!   each sending 1,000);
//! - `--timeout SECS`: abort the whole run if one measurement takes longer (default 120), so
//!   that a runtime that hangs is reported instead of hanging the benchmark;
//! - `--syscalls`: for `tcp_echo`, also count the server's system calls per round trip, in a
//!   second, traced run of each measurement (the timed run stays untraced): `perf stat` on the
//!   `syscalls:sys_enter_*` tracepoints if it works here, else `strace -c -f`;
//! - `--strace`: count with `strace -c -f` (implies `--syscalls`): it also reports failed calls,
//!   but slows the server enough to change how it batches (see `syscalls.rs`);
//! - `--echo-conns N`: connections of `tcp_echo` (default 50; 1 shows the per-round-trip
//!   overhead that batching hides);
//! - `--hello-http PATH`: the hatchery server of `http_wrk` (default: build
//!   `examples/hello_http` with cargo; if that fails, the bench's own hatchery responder runs
//!   instead, and the report says so); `--hello-http bench` runs the bench's own responder, the
//!   same code as the peers';
//! - workload names: run only these (default: all, in the order above); `pingpong` brings
//!   `pingpong_rendezvous` along.
//!
//! The socket workloads raise the soft `RLIMIT_NOFILE` to the hard limit. Internal modes: the
//! binary re-executes itself as `--child` (one measurement), `--client` (the echo client) and
//! `--serve-http RUNTIME --addr ADDR` (an `http_wrk` responder).
//!
//! Figures on a small shared machine are noisy: compare ratios from the same run.

mod common;
mod echo;
mod hatchery_rt;
mod http;
mod smol_rt;
mod syscalls;
mod tokio_rt;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    FANIN_PRODUCERS, Metric, NESTED_CHILDREN, PINGPONG_CAPACITY, Runtime, Sample, TIMER_SLEEP, Workload,
    proc_status_kib,
};
use syscalls::TracerKind;

const USAGE: &str = "usage: hatchery-bench [--reps N] [--quick] [--timeout SECS] [--syscalls] [--strace]
                      [--echo-conns N] [--hello-http PATH] [workload...]
workloads: spawn_join spawn_nested pingpong pingpong_rendezvous mpsc_fanin timers timeout_cancel
           cancel_nursery tcp_echo idle_conns http_wrk
           (default: all; pingpong brings pingpong_rendezvous along)";

/// Parsed command line.
struct Options {
    reps: usize,
    quick: bool,
    timeout: Duration,
    workloads: Vec<Workload>,
    /// `--syscalls` / `--strace`: count `tcp_echo`'s server system calls (the tracer is chosen
    /// in `main`).
    want_syscalls: bool,
    want_strace: bool,
    /// The tracer: chosen from the above in the parent; `--trace NAME` in a child.
    tracer: Option<TracerKind>,
    /// `--hello-http PATH`: hatchery's `http_wrk` server.
    hello_http: Option<PathBuf>,
    /// `--echo-conns N`: connections of `tcp_echo`.
    echo_conns: u64,
    /// `--child WORKLOAD RUNTIME N`: run one measurement and print it (internal).
    child: Option<(Workload, Runtime, u64)>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        reps: 5,
        quick: false,
        timeout: Duration::from_secs(120),
        workloads: Vec::new(),
        want_syscalls: false,
        want_strace: false,
        tracer: None,
        hello_http: None,
        echo_conns: common::ECHO_CONNS,
        child: None,
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>| -> Result<u64, String> {
        v.as_deref().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{flag} needs a positive number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => opts.reps = number("--reps", args.next())?.max(1) as usize,
            "--quick" => opts.quick = true,
            "--timeout" => opts.timeout = Duration::from_secs(number("--timeout", args.next())?),
            "--syscalls" => opts.want_syscalls = true,
            "--strace" => (opts.want_syscalls, opts.want_strace) = (true, true),
            "--trace" => {
                let kind = args.next().and_then(|k| TracerKind::from_name(&k));
                opts.tracer = Some(kind.ok_or("--trace needs perf or strace")?);
            }
            "--hello-http" => opts.hello_http = Some(args.next().ok_or("--hello-http needs a path")?.into()),
            "--echo-conns" => opts.echo_conns = number("--echo-conns", args.next())?.max(1),
            "--child" => {
                let w = args.next().and_then(|w| Workload::from_name(&w));
                let r = args.next().and_then(|r| Runtime::from_name(&r));
                let n = args.next().and_then(|n| n.parse().ok());
                match (w, r, n) {
                    (Some(w), Some(r), Some(n)) => opts.child = Some((w, r, n)),
                    _ => return Err("--child needs WORKLOAD RUNTIME N".to_string()),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            name => match Workload::from_name(name) {
                Some(w) => {
                    // The capacity-0 variant of `pingpong` goes along with it.
                    let with: &[Workload] = if w == Workload::Pingpong {
                        &[Workload::Pingpong, Workload::PingpongRendezvous]
                    } else {
                        &[w]
                    };
                    for &w in with {
                        if !opts.workloads.contains(&w) {
                            opts.workloads.push(w);
                        }
                    }
                }
                None => return Err(format!("unknown argument or workload: {name}")),
            },
        }
    }
    if opts.workloads.is_empty() {
        opts.workloads = Workload::ALL.to_vec();
    }
    Ok(opts)
}

/// What is running and until when it may run; checked by the watchdog thread.
static WATCHDOG: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Starts the thread that aborts the process when a measurement overruns its deadline.
fn start_watchdog() {
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let watch = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((deadline, what)) = &*watch
                && Instant::now() > *deadline
            {
                let msg = format!("TIMEOUT: {what} did not finish in time; aborting the benchmark");
                println!("\n**{msg}**");
                eprintln!("{msg}");
                std::process::exit(2);
            }
        }
    });
}

/// Arms the watchdog for one measurement (`None` disarms it).
fn watch(what: Option<(Duration, String)>) {
    *WATCHDOG.lock().unwrap_or_else(|e| e.into_inner()) = what.map(|(t, w)| (Instant::now() + t, w));
}

/// Nanoseconds per operation.
fn ns_per(d: Duration, ops: u64) -> f64 {
    d.as_nanos() as f64 / ops as f64
}

/// Runs one measurement in this process; returns one value per metric of the workload.
/// `opts.tracer` counts `tcp_echo`'s system calls; `hello_http` is hatchery's `http_wrk` server.
fn measure(w: Workload, rt: Runtime, n: u64, opts: &Options, hello_http: Option<&Path>) -> Sample {
    use Runtime::*;
    let values = match w {
        Workload::SpawnJoin => vec![ns_per(
            match rt {
                Hatchery => hatchery_rt::spawn_join(n),
                Tokio | TokioLocal => tokio_rt::spawn_join(rt == TokioLocal, n),
                Smol => smol_rt::spawn_join(n),
            },
            n,
        )],
        Workload::SpawnMemory => {
            let rss_before = proc_status_kib("VmRSS");
            let handle_bytes = match rt {
                Hatchery => {
                    hatchery_rt::spawn_join(n);
                    hatchery_rt::HANDLE_BYTES
                }
                Tokio | TokioLocal => {
                    tokio_rt::spawn_join(rt == TokioLocal, n);
                    tokio_rt::HANDLE_BYTES
                }
                Smol => {
                    smol_rt::spawn_join(n);
                    smol_rt::HANDLE_BYTES
                }
            };
            let per_task = proc_status_kib("VmHWM").saturating_sub(rss_before) as f64 * 1024.0 / n as f64;
            vec![per_task, per_task - handle_bytes as f64]
        }
        Workload::SpawnNested => {
            let parents = (n / NESTED_CHILDREN).max(1);
            let c = NESTED_CHILDREN;
            let d = match rt {
                Hatchery => hatchery_rt::spawn_nested(parents, c),
                Tokio | TokioLocal => tokio_rt::spawn_nested(rt == TokioLocal, parents, c),
                Smol => smol_rt::spawn_nested(parents, c),
            };
            vec![ns_per(d, parents * c)]
        }
        Workload::Pingpong => vec![ns_per(
            match rt {
                Hatchery => hatchery_rt::pingpong(n, PINGPONG_CAPACITY),
                Tokio | TokioLocal => tokio_rt::pingpong(rt == TokioLocal, n),
                Smol => smol_rt::pingpong(n),
            },
            n,
        )],
        Workload::PingpongRendezvous => {
            assert_eq!(rt, Hatchery, "pingpong_rendezvous runs on hatchery only");
            vec![ns_per(hatchery_rt::pingpong(n, 0), n)]
        }
        Workload::MpscFanin => {
            let per = (n / FANIN_PRODUCERS).max(1);
            let p = FANIN_PRODUCERS;
            let d = match rt {
                Hatchery => hatchery_rt::mpsc_fanin(p, per),
                Tokio | TokioLocal => tokio_rt::mpsc_fanin(rt == TokioLocal, p, per),
                Smol => smol_rt::mpsc_fanin(p, per),
            };
            vec![ns_per(d, p * per)]
        }
        Workload::Timers => {
            let rss_before = proc_status_kib("VmRSS");
            let d = match rt {
                Hatchery => hatchery_rt::timers(n, TIMER_SLEEP),
                Tokio | TokioLocal => tokio_rt::timers(rt == TokioLocal, n, TIMER_SLEEP),
                Smol => smol_rt::timers(n, TIMER_SLEEP),
            };
            let hwm = proc_status_kib("VmHWM");
            assert!(d >= TIMER_SLEEP, "{rt:?} woke its sleepers early: after {d:?}");
            let overhead_ms = (d - TIMER_SLEEP).as_secs_f64() * 1e3;
            vec![overhead_ms, hwm.saturating_sub(rss_before) as f64 * 1024.0 / n as f64]
        }
        Workload::TimeoutCancel => vec![ns_per(
            match rt {
                Hatchery => hatchery_rt::timeout_cancel(n),
                Tokio | TokioLocal => tokio_rt::timeout_cancel(rt == TokioLocal, n),
                Smol => smol_rt::timeout_cancel(n),
            },
            n,
        )],
        Workload::CancelNursery => vec![ns_per(
            match rt {
                Hatchery => hatchery_rt::cancel_nursery(n),
                Tokio | TokioLocal => tokio_rt::cancel_nursery(rt == TokioLocal, n),
                Smol => smol_rt::cancel_nursery(n),
            },
            n,
        )],
        Workload::TcpEcho | Workload::IdleConns => {
            let probe = echo::EchoRun::new(w, n, opts.echo_conns, opts.tracer);
            let echoed = match rt {
                Hatchery => hatchery_rt::echo_server(&probe),
                Tokio | TokioLocal => tokio_rt::echo_server(rt == TokioLocal, &probe),
                Smol => smol_rt::echo_server(&probe),
            };
            return probe.finish(rt.label(), echoed);
        }
        Workload::HttpWrk => return http::http_wrk(rt, n, hello_http),
    };
    Sample::of(values)
}

/// Runs one measurement in a fresh copy of this process (`--child`) and parses its answer.
fn measure_in_child(w: Workload, rt: Runtime, n: u64, tracer: Option<TracerKind>, opts: &Options) -> Sample {
    let exe = std::env::current_exe().expect("cannot find this executable");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--child",
        w.name(),
        rt.name(),
        &n.to_string(),
        "--timeout",
        &opts.timeout.as_secs().to_string(),
    ]);
    cmd.args(["--echo-conns", &opts.echo_conns.to_string()]);
    if let Some(t) = tracer {
        cmd.args(["--trace", t.name()]);
    }
    let child = echo::spawn_tied(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()))
        .expect("cannot start the child process");
    let out = child.wait_with_output().expect("cannot wait for the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {} child process failed ({}): {stdout}",
        rt.name(),
        w.name(),
        out.status
    );
    let values = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .map(|vals| vals.split_whitespace().map(|v| v.parse().expect("bad number from child")).collect())
        .unwrap_or_else(|| panic!("no result from the child process: {stdout}"));
    // `syscalls NAME=CALLS/ERRORS ...`, per round trip.
    let syscalls = stdout
        .lines()
        .find_map(|l| l.strip_prefix("syscalls "))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|kv| {
                    let (name, v) = kv.split_once('=')?;
                    let (calls, errors) = v.split_once('/')?;
                    Some((name.to_string(), calls.parse().ok()?, errors.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    Sample { values, syscalls }
}

/// Prints a measurement for the parent (`--child` mode).
fn print_sample(s: &Sample) {
    println!("result {}", s.values.iter().map(f64::to_string).collect::<Vec<_>>().join(" "));
    if !s.syscalls.is_empty() {
        let kv: Vec<String> = s.syscalls.iter().map(|(n, c, e)| format!("{n}={c}/{e}")).collect();
        println!("syscalls {}", kv.join(" "));
    }
}

/// Formats a figure with about three significant digits.
fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A median, or `-` for a runtime that does not run the workload.
fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), fmt_value)
}

/// A ratio such as `0.42x`, or `-` when a side is missing.
fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// The medians of one metric of one workload, per runtime (in `Runtime::ALL` order; `None` for
/// a runtime that does not run the workload).
struct Row {
    workload: Workload,
    metric: Metric,
    medians: [Option<f64>; 4],
}

impl Row {
    /// The peer with the best median (the lowest; the highest for a rate), and that median
    /// (`None` if no peer ran).
    fn best_peer(&self) -> Option<(Runtime, f64)> {
        let peers = (1..4).filter_map(|i| Some((Runtime::ALL[i], self.medians[i]?)));
        if self.metric.higher_is_better() {
            peers.max_by(|a, b| a.1.total_cmp(&b.1))
        } else {
            peers.min_by(|a, b| a.1.total_cmp(&b.1))
        }
    }

    /// hatchery / the runtime at `peer` in `Runtime::ALL`.
    fn ratio(&self, peer: usize) -> Option<f64> {
        Some(self.medians[0]? / self.medians[peer]?)
    }

    /// hatchery / the best peer.
    fn ratio_best(&self) -> Option<f64> {
        Some(self.medians[0]? / self.best_peer()?.1)
    }

    /// `0.42x (smol)`, or `-` when no peer ran.
    fn fmt_best(&self) -> String {
        match (self.ratio_best(), self.best_peer()) {
            (Some(r), Some((best, _))) => format!("{r:.2}x ({})", best.label()),
            _ => "-".to_string(),
        }
    }
}

/// One measurement of `w` on `rt`, in this process or a fresh one; for `tcp_echo` with a
/// tracer, a second, traced run supplies the system calls.
fn sample(w: Workload, rt: Runtime, n: u64, opts: &Options, hello_http: Option<&Path>) -> Sample {
    if !w.fresh_process() {
        return measure(w, rt, n, opts, hello_http);
    }
    let mut s = measure_in_child(w, rt, n, None, opts);
    if w == Workload::TcpEcho
        && let Some(t) = opts.tracer
    {
        let traced = measure_in_child(w, rt, n, Some(t), opts);
        let m =
            w.metrics().iter().position(|m| matches!(m, Metric::SyscallsPer(_))).expect("a syscall metric");
        s.values[m] = traced.values[m];
        s.syscalls = traced.syscalls;
    }
    s
}

/// What `http_wrk` needs before it runs: `wrk`, and hatchery's server. `None` (after saying
/// why) if the workload must be skipped; `Some(None)` to run the bench's own hatchery responder.
fn prepare_http(opts: &Options) -> Option<Option<PathBuf>> {
    if !http::wrk_installed() {
        println!("- **skipped**: `wrk` is not installed (`apt-get install -y wrk`)");
        return None;
    }
    match &opts.hello_http {
        Some(p) if p.as_os_str() == "bench" => {
            println!("- hatchery: the bench crate's own responder (`--hello-http bench`)");
            return Some(None);
        }
        Some(p) => {
            println!("- hatchery: `{}`", p.display());
            return Some(Some(p.clone()));
        }
        None => {}
    }
    match http::build_hello_http() {
        Ok(p) => {
            println!("- hatchery: `examples/hello_http` (`{}`)", p.display());
            Some(Some(p))
        }
        Err(e) => {
            println!(
                "- hatchery: **not `examples/hello_http`** ({e}); the bench crate's own \
                 hatchery responder runs instead"
            );
            Some(None)
        }
    }
}

/// The median system calls per round trip by name, per runtime, as a table (`tcp_echo`).
fn print_syscalls(w: Workload, per_rt: &[Vec<common::PerOp>]) {
    // (calls, errors) medians per runtime and name; a name missing from a rep counts 0 there.
    let med: Vec<BTreeMap<&str, (f64, f64)>> = per_rt
        .iter()
        .map(|reps| {
            let mut all: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
            for (r, sample) in reps.iter().enumerate() {
                for (name, calls, errors) in sample {
                    let e = all.entry(name).or_default();
                    e.0.resize(r, 0.0);
                    e.1.resize(r, 0.0);
                    e.0.push(*calls);
                    e.1.push(*errors);
                }
            }
            all.into_iter()
                .map(|(name, (mut calls, mut errors))| {
                    calls.resize(reps.len(), 0.0);
                    errors.resize(reps.len(), 0.0);
                    (name, (median(&calls), median(&errors)))
                })
                .collect()
        })
        .collect();
    let calls_of = |i: usize, n: &str| med[i].get(n).map_or(0.0, |c| c.0);
    // Every name any runtime made, hatchery's most frequent first.
    let mut names: Vec<&str> = med.iter().flat_map(|m| m.keys().copied()).collect();
    if names.is_empty() {
        return;
    }
    names.sort_by(|a, b| calls_of(0, b).total_cmp(&calls_of(0, a)).then_with(|| a.cmp(b)));
    names.dedup();
    println!(
        "\n{} server system calls per round trip, by name (medians; failed calls in brackets):\n",
        w.name()
    );
    println!("| syscall | {} |", Runtime::ALL.map(|r| r.label()).join(" | "));
    println!("|---|---|---|---|---|");
    // One cell per runtime: `-` for a runtime without samples, else `cell(i)`.
    let cells = |cell: &dyn Fn(usize) -> String| {
        let cells: Vec<String> =
            (0..per_rt.len()).map(|i| if per_rt[i].is_empty() { "-".to_string() } else { cell(i) }).collect();
        cells.join(" | ")
    };
    // Calls below this per round trip (the tracer's own attach, the `go` write, closing) are
    // summed into one row.
    const NOISE: f64 = 0.005;
    let (shown, rest): (Vec<&str>, Vec<&str>) =
        names.into_iter().partition(|n| (0..per_rt.len()).any(|i| calls_of(i, n) >= NOISE));
    for n in shown {
        let cell = |i: usize| match med[i].get(n) {
            None => "0".to_string(),
            Some((c, e)) if e.is_nan() || *e < NOISE => fmt_value(*c),
            Some((c, e)) => format!("{} ({} failed)", fmt_value(*c), fmt_value(*e)),
        };
        println!("| {n} | {} |", cells(&cell));
    }
    if !rest.is_empty() {
        let other = cells(&|i| fmt_value(rest.iter().map(|n| calls_of(i, n)).sum()));
        println!("| other ({}) | {other} |", rest.join(", "));
    }
    println!("| **sum of medians** | {} |", cells(&|i| fmt_value(med[i].values().map(|c| c.0).sum())));
}

/// The size of `n` in a workload's heading.
fn n_label(w: Workload, n: u64, opts: &Options) -> String {
    match w {
        Workload::TcpEcho => format!("{n} round trips: {} connections", opts.echo_conns),
        Workload::IdleConns => format!("{n} connections"),
        Workload::HttpWrk => format!("{n}: `wrk -t1 -c{} -d{n}s --latency`", common::WRK_CONNS),
        _ => n.to_string(),
    }
}

/// Runs every repetition of one workload, printing samples as they come; returns its rows.
fn run_workload(w: Workload, opts: &Options) -> Vec<Row> {
    let n = if opts.quick { (w.full_n() / 10).max(1) } else { w.full_n() };
    let metrics = w.metrics();
    println!("\n## {} (n = {})\n", w.name(), n_label(w, n, opts));
    let hello_http = if w == Workload::HttpWrk {
        match prepare_http(opts) {
            Some(p) => p,
            None => return Vec::new(),
        }
    } else {
        None
    };
    if w == Workload::TcpEcho
        && let Some(t) = opts.tracer
    {
        println!("- system calls: counted by {} in a second, traced run of each measurement", t.name());
    }
    let runtimes = w.runtimes();
    // samples[runtime][metric] = one value per repetition (none for a runtime that does not run
    // the workload, or a metric not measured).
    let mut samples = vec![vec![Vec::new(); metrics.len()]; Runtime::ALL.len()];
    // syscalls[runtime] = one breakdown per repetition (`tcp_echo --syscalls`).
    let mut syscalls = vec![Vec::new(); Runtime::ALL.len()];
    for rep in 0..opts.reps {
        print!("- rep {}/{}:", rep + 1, opts.reps);
        for k in 0..runtimes.len() {
            let rt = runtimes[(k + rep) % runtimes.len()];
            let idx = Runtime::ALL.iter().position(|&r| r == rt).expect("a runtime");
            let _ = std::io::stdout().flush();
            watch(Some((opts.timeout, format!("{} on {} (n = {n})", w.name(), rt.label()))));
            let s = sample(w, rt, n, opts, hello_http.as_deref());
            watch(None);
            let shown: Vec<String> = s
                .values
                .iter()
                .zip(metrics)
                .filter(|(v, _)| !v.is_nan())
                .map(|(v, m)| format!("{} {}", fmt_value(*v), m.short_unit()))
                .collect();
            let shown = if shown.is_empty() { "failed".to_string() } else { shown.join(", ") };
            print!("{} {}: {}", if k == 0 { "" } else { ";" }, rt.label(), shown);
            for (m, v) in s.values.into_iter().enumerate() {
                if !v.is_nan() {
                    samples[idx][m].push(v);
                }
            }
            if !s.syscalls.is_empty() {
                syscalls[idx].push(s.syscalls);
            }
        }
        println!();
    }
    println!();
    println!("| unit | {} |", Runtime::ALL.map(|r| format!("{} median (min-max)", r.label())).join(" | "));
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (m, &metric) in metrics.iter().enumerate() {
        if samples.iter().all(|s| s[m].is_empty()) {
            continue; // not measured in this run (system calls without --syscalls)
        }
        let cells: Vec<String> = samples
            .iter()
            .map(|s| {
                if s[m].is_empty() {
                    return "-".to_string();
                }
                let (lo, hi) = min_max(&s[m]);
                format!("{} ({}-{})", fmt_value(median(&s[m])), fmt_value(lo), fmt_value(hi))
            })
            .collect();
        println!("| {} | {} |", metric.unit(), cells.join(" | "));
        let medians = std::array::from_fn(|i| (!samples[i][m].is_empty()).then(|| median(&samples[i][m])));
        rows.push(Row { workload: w, metric, medians });
    }
    println!();
    for row in &rows {
        if row.best_peer().is_none() {
            println!("- {}: hatchery only, no peer ratio", row.metric.unit());
            continue;
        }
        let ratios: Vec<String> = (1..4)
            .map(|i| format!("hatchery/{} {}", Runtime::ALL[i].label(), fmt_ratio(row.ratio(i))))
            .collect();
        println!("- {}: {}; hatchery/best peer **{}**", row.metric.unit(), ratios.join(", "), row.fmt_best());
    }
    if syscalls.iter().any(|s| !s.is_empty()) {
        print_syscalls(w, &syscalls);
    }
    rows
}

fn print_summary(rows: &[Row], reps: usize) {
    println!("\n## Summary (medians of {reps} reps; lower is better, except for rates: /s)\n");
    println!("| workload | unit | hatchery | tokio | tokio LocalSet | smol | hatchery/best peer |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.workload.name(),
            row.metric.unit(),
            row.medians.map(fmt_opt).join(" | "),
            row.fmt_best()
        );
    }
    println!("\n### Ratios hatchery / peer\n");
    println!(
        "| workload | unit | hatchery/tokio | hatchery/tokio LocalSet | hatchery/smol | hatchery/best peer |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.workload.name(),
            row.metric.unit(),
            fmt_ratio(row.ratio(1)),
            fmt_ratio(row.ratio(2)),
            fmt_ratio(row.ratio(3)),
            fmt_ratio(row.ratio_best())
        );
    }
    let hatchery_only: Vec<&str> =
        rows.iter().filter(|r| r.best_peer().is_none()).map(|r| r.workload.name()).collect();
    if !hatchery_only.is_empty() {
        println!(
            "\n`-`: {} runs on hatchery only (tokio's mpsc and async-channel have no capacity 0).",
            hatchery_only.join(", ")
        );
    }
    // The capacity-0 target is set against the peers' capacity-1 pingpong (performance.md).
    let find = |w| rows.iter().find(|r| r.workload == w);
    if let (Some(rendezvous), Some(pingpong)) = (find(Workload::PingpongRendezvous), find(Workload::Pingpong))
        && let (Some(h), Some((best, best_v))) = (rendezvous.medians[0], pingpong.best_peer())
    {
        println!(
            "pingpong_rendezvous (hatchery, capacity 0) / best peer's pingpong (capacity 1, {}): {:.2}x",
            best.label(),
            h / best_v
        );
    }
}

/// The CPU model, for the report header.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?.split(':').nth(1).map(str::trim).map(String::from)
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn main() -> ExitCode {
    echo::raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--client") => return echo::client_main(&args[1..]),
        Some("--serve-http") => return http::serve_main(&args[1..]),
        _ => {}
    }
    let mut opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    start_watchdog();
    if let Some((w, rt, n)) = opts.child {
        watch(Some((opts.timeout, format!("{} on {} (n = {n}, child process)", w.name(), rt.label()))));
        print_sample(&measure(w, rt, n, &opts, opts.hello_http.as_deref()));
        return ExitCode::SUCCESS;
    }
    if opts.want_syscalls && opts.workloads.contains(&Workload::TcpEcho) {
        match TracerKind::detect(opts.want_strace) {
            Ok(t) => opts.tracer = Some(t),
            Err(e) => println!("**--syscalls: {e}; system calls are not counted**"),
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# hatchery-bench\n");
    println!("- command: `hatchery-bench {}`", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    println!("- machine: {} x {cpus}", cpu_model());
    println!("- hatchery: default `Builder` (random-reverse batches, yield budget 64)");
    println!(
        "- {} reps{}; runtimes alternate within each rep, the order rotating between reps",
        opts.reps,
        if opts.quick { ", --quick (n / 10)" } else { "" }
    );
    let mut rows = Vec::new();
    for &w in &opts.workloads {
        rows.extend(run_workload(w, &opts));
    }
    print_summary(&rows, opts.reps);
    ExitCode::SUCCESS
}
