//! `hatchery-bench`: hatchery against the runtimes its users would pick instead.
//!
//! Every workload runs on four runtimes in one process run (except `pingpong_rendezvous`, on
//! hatchery only), alternating runtimes within each repetition (the order rotates from one
//! repetition to the next):
//!
//! - **hatchery**: `Builder::new().schedule(SchedulePolicy::Fifo).run(..)`; children are spawned
//!   into a nursery, whose own cost is included;
//! - **tokio**: a `current_thread` runtime with the time driver, `tokio::spawn`;
//! - **tokio LocalSet**: the same runtime inside a `LocalSet`, `spawn_local`;
//! - **smol**: an `async_executor::LocalExecutor` driven by `async_io::block_on`.
//!
//! # Workloads (same code shape on every runtime; each checks a checksum)
//!
//! | workload | n | measures |
//! |---|---|---|
//! | `spawn_join` | 1,000,000 | spawn a child returning `i: u64`, keep its handle; then await all handles in order and sum them. ns per task |
//! | `spawn_nested` | 1,000,000 leaves | 1,000 parents each spawn 1,000 children and await them (nested nurseries for hatchery). ns per leaf |
//! | `pingpong` | 1,000,000 round trips | task B (started first) receives each value on a capacity-1 channel and sends it back on another; task A sends `i`, receives it back and sums. hatchery `channel(1)`, tokio `sync::mpsc::channel(1)`, smol `async_channel::bounded(1)`. ns per round trip |
//! | `pingpong_rendezvous` | 1,000,000 round trips | `pingpong` over two capacity-0 (rendezvous) channels, **hatchery only** (tokio's mpsc and async-channel have no capacity 0; their cells show `-`). Naming `pingpong` on the command line runs it too. ns per round trip |
//! | `mpsc_fanin` | 1,000,000 messages | 100 producers each send 10,000 `u64` into one bounded(1024) channel; one consumer task (started first) sums until the channel ends, when the last sender is dropped. ns per message |
//! | `timers` | 100,000 | children each sleep 1 s on the real clock, all concurrently. Wall overhead beyond 1 s, and peak bytes per sleeping task = (`VmHWM` at the end - `VmRSS` before) / n. Each measurement runs in a fresh child process (the binary re-executes itself with `--child`) so that the process-wide high-water marks do not mix |
//! | `timeout_cancel` | 100,000 | children each run a 1 ms timeout around a 1-hour sleep (hatchery `move_on_after`, tokio `time::timeout`, smol `future::or` of two `Timer`s). Wall / n |
//! | `cancel_nursery` | 100,000 | children each sleep 1 hour; once all are parked, the group is cancelled: hatchery cancels the nursery's scope from its body (after `testing::wait_all_tasks_blocked`), tokio calls `JoinSet::abort_all` and drains the set, smol drops the `Task`s and waits until every future is dropped. Time from the cancel to the end, per child |
//!
//! Children that nobody awaits (`timers`, `timeout_cancel`, `cancel_nursery`, the echoing task
//! of `pingpong`, the producers of `mpsc_fanin`) are started with `Nursery::start_soon` on
//! hatchery (the nursery waits for them); the peers keep a handle per task to wait on, since they
//! have no other way to.
//!
//! Every figure is "lower is better". The report gives per-repetition samples, then the median
//! (with min and max) per runtime, the ratio hatchery / each peer and hatchery / best peer, and
//! finally a markdown table to paste into `README.md`.
//!
//! # Running
//!
//! ```text
//! cargo run --release -p hatchery-bench -- [--reps N] [--quick] [--timeout SECS] [workload...]
//! ```
//!
//! - `--reps N`: repetitions per runtime (default 5); the report quotes medians;
//! - `--quick`: divide every n by 10, for a fast smoke run (`mpsc_fanin` keeps 100 producers,
//!   each sending 1,000);
//! - `--timeout SECS`: abort the whole run if one measurement takes longer (default 120), so
//!   that a runtime that hangs is reported instead of hanging the benchmark;
//! - workload names: run only these (default: all, in the order above); `pingpong` brings
//!   `pingpong_rendezvous` along.
//!
//! Figures on a small shared machine are noisy: compare ratios from the same run.

mod common;
mod hatchery_rt;
mod smol_rt;
mod tokio_rt;

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    FANIN_PRODUCERS, Metric, NESTED_CHILDREN, PINGPONG_CAPACITY, Runtime, TIMER_SLEEP, Workload,
    proc_status_kib,
};

const USAGE: &str = "usage: hatchery-bench [--reps N] [--quick] [--timeout SECS] [workload...]
workloads: spawn_join spawn_nested pingpong pingpong_rendezvous mpsc_fanin timers timeout_cancel
           cancel_nursery (default: all; pingpong brings pingpong_rendezvous along)";

/// Parsed command line.
struct Options {
    reps: usize,
    quick: bool,
    timeout: Duration,
    workloads: Vec<Workload>,
    /// `--child WORKLOAD RUNTIME N`: run one measurement and print it (internal).
    child: Option<(Workload, Runtime, u64)>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        reps: 5,
        quick: false,
        timeout: Duration::from_secs(120),
        workloads: Vec::new(),
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
fn measure(w: Workload, rt: Runtime, n: u64) -> Vec<f64> {
    use Runtime::*;
    match w {
        Workload::SpawnJoin => vec![ns_per(
            match rt {
                Hatchery => hatchery_rt::spawn_join(n),
                Tokio | TokioLocal => tokio_rt::spawn_join(rt == TokioLocal, n),
                Smol => smol_rt::spawn_join(n),
            },
            n,
        )],
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
            let overhead_ms = d.saturating_sub(TIMER_SLEEP).as_secs_f64() * 1e3;
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
    }
}

/// Runs one measurement in a fresh copy of this process (`--child`) and parses its answer.
fn measure_in_child(w: Workload, rt: Runtime, n: u64, timeout: Duration) -> Vec<f64> {
    let exe = std::env::current_exe().expect("cannot find this executable");
    let out = Command::new(exe)
        .args(["--child", w.name(), rt.name(), &n.to_string(), "--timeout", &timeout.as_secs().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot start the child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {} child process failed ({}): {stdout}",
        rt.name(),
        w.name(),
        out.status
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .map(|vals| vals.split_whitespace().map(|v| v.parse().expect("bad number from child")).collect())
        .unwrap_or_else(|| panic!("no result from the child process: {stdout}"))
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
    /// The peer with the lowest median, and that median (`None` if no peer ran).
    fn best_peer(&self) -> Option<(Runtime, f64)> {
        (1..4).filter_map(|i| Some((Runtime::ALL[i], self.medians[i]?))).min_by(|a, b| a.1.total_cmp(&b.1))
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

/// Runs every repetition of one workload, printing samples as they come; returns its rows.
fn run_workload(w: Workload, opts: &Options) -> Vec<Row> {
    let n = if opts.quick { w.full_n() / 10 } else { w.full_n() };
    let metrics = w.metrics();
    println!("\n## {} (n = {n})\n", w.name());
    let runtimes = w.runtimes();
    // samples[runtime][metric] = one value per repetition (none for a runtime that does not run
    // the workload).
    let mut samples = vec![vec![Vec::new(); metrics.len()]; Runtime::ALL.len()];
    for rep in 0..opts.reps {
        print!("- rep {}/{}:", rep + 1, opts.reps);
        for k in 0..runtimes.len() {
            let rt = runtimes[(k + rep) % runtimes.len()];
            let idx = Runtime::ALL.iter().position(|&r| r == rt).expect("a runtime");
            let _ = std::io::stdout().flush();
            watch(Some((opts.timeout, format!("{} on {} (n = {n})", w.name(), rt.label()))));
            let values =
                if w.fresh_process() { measure_in_child(w, rt, n, opts.timeout) } else { measure(w, rt, n) };
            watch(None);
            let shown: Vec<String> = values
                .iter()
                .zip(metrics)
                .map(|(v, m)| format!("{} {}", fmt_value(*v), m.short_unit()))
                .collect();
            print!("{} {}: {}", if k == 0 { "" } else { ";" }, rt.label(), shown.join(", "));
            for (m, v) in values.into_iter().enumerate() {
                samples[idx][m].push(v);
            }
        }
        println!();
    }
    println!();
    println!("| unit | {} |", Runtime::ALL.map(|r| format!("{} median (min-max)", r.label())).join(" | "));
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (m, &metric) in metrics.iter().enumerate() {
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
    rows
}

fn print_summary(rows: &[Row], reps: usize) {
    println!("\n## Summary (medians of {reps} reps; lower is better)\n");
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
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    start_watchdog();
    if let Some((w, rt, n)) = opts.child {
        let values = measure(w, rt, n);
        println!("result {}", values.iter().map(f64::to_string).collect::<Vec<_>>().join(" "));
        return ExitCode::SUCCESS;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# hatchery-bench\n");
    println!("- command: `hatchery-bench {}`", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    println!("- machine: {} x {cpus}", cpu_model());
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
