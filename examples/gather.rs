//! The asyncio lesson, the structured way: N tasks that each sleep for one second finish in
//! about one second in total, because they all sleep at the same time.
//!
//! What it shows:
//! - spawning many children into one nursery and gathering their results by awaiting their
//!   `JoinHandle`s in order (asyncio's `gather`);
//! - how cheap a task is: run it with a million tasks and it prints the cost per task, that
//!   is the time beyond the one-second nap divided by the number of tasks.
//!
//! ```text
//! cargo run --example gather
//! cargo run --release --example gather -- --tasks 1000000
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use hatchery::{Error, nursery, sleep};

/// How long every task sleeps.
const NAP: Duration = Duration::from_secs(1);

/// One task: sleeps, then hands back its number.
async fn work(i: u64) -> Result<u64, Error> {
    sleep(NAP).await?;
    Ok(i)
}

/// Parses `--tasks N` (or `--tasks=N`); 30 by default.
fn parse_tasks() -> Result<u64, String> {
    let mut tasks = 30;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = if arg == "--tasks" {
            args.next().ok_or("--tasks needs a number")?
        } else if let Some(value) = arg.strip_prefix("--tasks=") {
            value.to_string()
        } else {
            return Err(format!("unknown argument {arg:?}; usage: gather [--tasks N]"));
        };
        tasks = value.parse().map_err(|e| format!("--tasks {value:?}: {e}"))?;
    }
    Ok(tasks)
}

/// Spawns `tasks` children, waits for all of them, and checks their results.
async fn gather(tasks: u64, t0: Instant) -> Result<(), Error> {
    let sum = nursery(async |n| {
        // Spawning does not run anything yet: the children start when the body first yields.
        let handles: Vec<_> = (0..tasks).map(|i| n.spawn(work(i))).collect();
        println!("spawned {tasks} tasks in {:.3?}", t0.elapsed());

        // The first handle resolves after about one second; by then every child has slept, so
        // the rest come back at once.
        let mut sum = 0;
        for handle in handles {
            sum += handle.await?;
        }
        Ok(sum)
    })
    .await?
    .expect("nothing cancels this nursery, so the body always returns its value");
    assert_eq!(sum, tasks * tasks.saturating_sub(1) / 2, "every result came back exactly once");
    Ok(())
}

fn main() -> ExitCode {
    let tasks = match parse_tasks() {
        Ok(n) => n,
        Err(msg) => {
            eprintln!("gather: {msg}");
            return ExitCode::from(2);
        }
    };

    let t0 = Instant::now();
    if let Err(e) = hatchery::run(gather(tasks, t0)) {
        eprintln!("gather: {e}");
        return ExitCode::FAILURE;
    }
    let elapsed = t0.elapsed();

    println!("{tasks} tasks that each slept {NAP:?} finished in {elapsed:.3?} in total");
    if tasks >= 1000 {
        // Everything beyond the nap is overhead: spawning, polling, timers, gathering, freeing.
        let overhead = elapsed.saturating_sub(NAP);
        let per_task = overhead.as_nanos() as f64 / tasks as f64;
        println!("overhead {overhead:.3?}, about {per_task:.0} ns per task");
        if cfg!(debug_assertions) {
            println!("(a debug build: use --release for meaningful figures)");
        }
    }
    ExitCode::SUCCESS
}
