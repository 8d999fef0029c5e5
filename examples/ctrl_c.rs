//! Graceful shutdown on Ctrl-C: the first SIGINT (or SIGTERM) cancels the server's tasks, which
//! run their cleanup; a second one ends the process at once.
//!
//! What it shows:
//! - `signal::ctrl_c_cancels` around the whole server: a cancel scope that the first signal
//!   cancels, so the nursery inside cancels every worker;
//! - cleanup in a shielded scope, which the cancellation does not interrupt;
//! - the exit status from the outcome: 130 after SIGINT, 143 after SIGTERM, 0 if the server
//!   returned on its own; and 130 (or 143) at once if a second signal arrives during cleanup.
//!
//! ```text
//! cargo run --example ctrl_c                    # then press Ctrl-C; `echo $?` prints 130
//! cargo run --example ctrl_c -- --stuck-cleanup # cleanup hangs: press Ctrl-C twice
//! ```
//!
//! `tests/signals.rs` runs it as a child process, sends it signals with `kill`, and checks its
//! output and exit status.

use std::process::ExitCode;
use std::time::Duration;

use hatchery::signal::ctrl_c_cancels;
use hatchery::{CancelScope, Cancelled, Error, nursery, sleep, sleep_forever};

fn main() -> ExitCode {
    let stuck = std::env::args().any(|a| a == "--stuck-cleanup");
    match hatchery::run(ctrl_c_cancels(serve(stuck))) {
        Ok(outcome) => {
            match outcome.signal() {
                Some(sig) => println!("interrupted by signal {sig}, exit status {}", outcome.exit_status()),
                None => println!("finished"),
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The "server": three workers that run until cancelled.
async fn serve(stuck: bool) -> Result<(), Error> {
    nursery(async |n| {
        for id in 0..3 {
            n.start_soon(worker(id, stuck));
        }
        // The signal handlers are in place before the body runs, so a Ctrl-C from now on is
        // a graceful shutdown.
        println!("ready: press Ctrl-C to stop");
        Ok::<_, Error>(())
    })
    .await?;
    Ok(())
}

async fn worker(id: u32, stuck: bool) -> Result<(), Error> {
    // The work: here, waiting for ever (a real server would accept connections).
    let Err(cancelled) = sleep_forever().await;
    println!("worker {id}: {cancelled}; cleaning up");
    // Cleanup in a shielded scope: the cancellation does not interrupt it.
    CancelScope::new()
        .shielded()
        .run(async {
            if stuck {
                sleep_forever().await?;
            }
            sleep(Duration::from_millis(20)).await?;
            Ok::<_, Cancelled>(())
        })
        .await?;
    println!("worker {id}: clean");
    Err(cancelled.into())
}
