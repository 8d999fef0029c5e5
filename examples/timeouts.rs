//! Timeouts the structured way: cancel scopes with deadlines, shields, and deadlines that move
//! while the work runs.
//!
//! What it shows:
//! - `move_on_after`: give up quietly, and tell from the result (or from the scope's handle,
//!   `cancelled_caught`) whether the deadline fired;
//! - `fail_after`: the same deadline, reported as an error (`Error::TooSlow`);
//! - a shielded cleanup: once a scope is cancelled every checkpoint in it fails, so cleanup that
//!   must wait for something goes in a shielded scope (with a timeout of its own);
//! - moving a deadline while the scope runs: an idle timeout pushed back by every chunk of data
//!   (`set_timeout`) under an overall budget, with `current_effective_deadline` showing which
//!   one governs; and a shutdown that gives a running worker a grace period (`set_deadline`).
//!
//! It runs on hatchery's virtual clock (`MockClock` with autojump): whenever every task is
//! waiting, the clock jumps straight to the next deadline. The output shows virtual
//! timestamps, exactly as they would be with real time, but the run takes a few milliseconds.
//!
//! ```text
//! cargo run --example timeouts
//! ```

use std::time::Duration;

use hatchery::testing::MockClock;
use hatchery::{
    Builder, CancelScope, Error, Instant, current_effective_deadline, fail_after, move_on_after, now,
    nursery, sleep,
};

/// Prints a line stamped with the (virtual) time.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("[t={:6.3}s] {}", now().as_secs_f64(), format_args!($($arg)*))
    };
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A pretend request that takes `latency` to answer.
async fn fetch(what: &str, latency: Duration) -> Result<String, Error> {
    sleep(latency).await?;
    Ok(format!("<{what}>"))
}

/// Describes a deadline as returned by `current_effective_deadline`.
fn show(deadline: Option<Instant>) -> String {
    match deadline {
        None => "none".to_string(),
        // This is how `current_effective_deadline` says "you are already cancelled".
        Some(Instant::ZERO) => "already due".to_string(),
        Some(d) => format!("t={:.3}s", d.as_secs_f64()),
    }
}

fn heading(title: &str) {
    println!("\n== {title}");
}

/// `move_on_after`: do something for at most this long, then carry on without it.
async fn move_on() -> Result<(), Error> {
    heading("move_on_after: give up quietly");
    for (what, latency) in [("fast reply", ms(300)), ("slow reply", ms(5000))] {
        // `Some(value)` if the work finished, `None` if the deadline cut it short.
        match move_on_after(ms(1000), fetch(what, latency)).await? {
            Some(body) => say!("got {body}"),
            None => say!("no {what} within 1 s; moving on without it"),
        }
    }

    // Best effort: fetch as many pages as fit in one second. The pages are kept outside the
    // scope, so the ones that arrived survive the timeout; the scope's handle tells whether
    // the deadline is what stopped the loop.
    let scope = CancelScope::new().with_timeout(ms(1000));
    let timer = scope.handle();
    let mut pages = Vec::new();
    scope
        .run(async {
            for page in 1..=10 {
                pages.push(fetch(&format!("page {page}"), ms(300)).await?);
            }
            Ok::<_, Error>(())
        })
        .await?;
    if timer.cancelled_caught() {
        say!("time's up: kept {} of 10 pages: {}", pages.len(), pages.join(" "));
    } else {
        say!("all 10 pages in time");
    }
    Ok(())
}

/// `fail_after`: when missing the deadline is an error for the caller.
async fn fail() -> Result<(), Error> {
    heading("fail_after: a missed deadline is an error");
    match fail_after(ms(1000), fetch("slow reply", ms(5000))).await {
        Ok(body) => say!("got {body}"),
        Err(Error::TooSlow(e)) => say!("fail_after gave: Error::TooSlow({e})"),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Cleanup that has to wait for something, inside a scope that is already cancelled.
async fn shielded_cleanup() -> Result<(), Error> {
    heading("a shielded cleanup completes although its scope was cancelled");
    let upload = CancelScope::new().with_timeout(ms(1000));
    let upload_handle = upload.handle();
    upload
        .run(async {
            say!("upload: started, deadline {}", show(current_effective_deadline()));
            // The upload itself; the deadline interrupts it after one second.
            let outcome = sleep(ms(5000)).await;
            match &outcome {
                Ok(()) => say!("upload: finished"),
                Err(cancelled) => say!("upload: interrupted ({cancelled})"),
            }

            // Still inside the cancelled scope: every checkpoint fails at once.
            say!("cleanup: effective deadline here: {}", show(current_effective_deadline()));
            let unshielded = sleep(ms(200)).await;
            say!("cleanup: an unshielded sleep returns {unshielded:?} immediately");

            // A shielded scope is out of reach of the cancellation around it. It gets its own
            // timeout, so that a cleanup that hangs cannot hang the program.
            let cleaned = CancelScope::new()
                .shielded()
                .with_timeout(ms(2000))
                .run(async {
                    say!("cleanup: shielded, deadline {}", show(current_effective_deadline()));
                    say!("cleanup: asking the server to discard the partial upload...");
                    sleep(ms(400)).await?;
                    say!("cleanup: done");
                    Ok::<_, Error>(())
                })
                .await?;
            if cleaned.is_none() {
                say!("cleanup: gave up after 2 s");
            }

            // Now let the cancellation continue on its way out.
            outcome?;
            Ok::<_, Error>(())
        })
        .await?;
    say!(
        "the upload's scope absorbed its own cancellation: cancelled_caught = {}",
        upload_handle.cancelled_caught()
    );
    Ok(())
}

const IDLE: Duration = ms(1000);
const TOTAL: Duration = ms(3000);

/// Receives chunks of data that arrive after the given gaps. It stops early, keeping what it
/// got, when no chunk arrives for `IDLE` (an idle timeout, moved forward by every chunk), and
/// fails when the whole transfer takes more than `TOTAL`.
async fn download(gaps: &[Duration]) -> Result<usize, Error> {
    fail_after(TOTAL, async {
        let idle_scope = CancelScope::new().with_timeout(IDLE);
        let idle = idle_scope.handle();
        let mut received = 0;
        idle_scope
            .run(async {
                for &gap in gaps {
                    sleep(gap).await?; // waiting for the next chunk
                    received += 1;
                    // Activity: push the idle deadline back (`set_timeout(d)` is
                    // `set_deadline(now() + d)`).
                    idle.set_timeout(IDLE);
                    // The deadline that applies here is the earliest one of the enclosing
                    // scopes: the idle deadline at first, the overall budget near the end.
                    let effective = current_effective_deadline();
                    let which = if effective == idle.deadline() { "idle" } else { "total" };
                    say!("  chunk {received}; now due by {} ({which})", show(effective));
                }
                Ok::<_, Error>(())
            })
            .await?;
        if idle.cancelled_caught() {
            say!("  stalled: nothing for {IDLE:?}, keeping {received} chunk(s)");
        }
        Ok(received)
    })
    .await
}

async fn moving_deadlines() -> Result<(), Error> {
    heading("set_timeout: an idle timeout under an overall budget");
    let transfers: [(&str, &[Duration]); 3] = [
        ("steady", &[ms(300), ms(800), ms(600), ms(900)]),
        ("stalls", &[ms(300), ms(400), ms(1500), ms(100)]),
        ("trickles", &[ms(900); 5]),
    ];
    for (name, gaps) in transfers {
        say!("download {name:?}, idle timeout {IDLE:?}, budget {TOTAL:?}");
        match download(gaps).await {
            Ok(n) => say!("download {name:?}: {n} chunk(s)"),
            Err(Error::TooSlow(e)) => say!("download {name:?}: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Does one job after another, until cancelled.
async fn work_loop(done: &mut u32) -> Result<(), Error> {
    loop {
        sleep(ms(300)).await?;
        *done += 1;
        say!("  worker: job {done} done");
    }
}

async fn graceful_shutdown() -> Result<(), Error> {
    heading("set_deadline: a shutdown with a grace period");
    // No deadline to begin with: the worker runs until someone decides otherwise.
    let worker_scope = CancelScope::new();
    let worker = worker_scope.handle();
    let mut done = 0;
    nursery(async |n| {
        // The supervisor (a sibling) gives the running worker a deadline.
        n.start_soon(async {
            sleep(ms(1000)).await?;
            let grace = ms(400);
            worker.set_deadline(now() + grace);
            say!("  supervisor: shutting down, the worker has {grace:?} to wrap up");
            Ok(())
        });
        worker_scope.run(work_loop(&mut done)).await?;
        Ok(())
    })
    .await?;
    say!("  worker: stopped after {done} jobs; its deadline fired: {}", worker.cancelled_caught());
    Ok(())
}

fn main() -> Result<(), Error> {
    println!("This example runs on a virtual clock: the timestamps are virtual seconds, and");
    println!("the clock jumps to the next deadline whenever every task is waiting.");

    let clock = MockClock::with_autojump(Duration::ZERO);
    let real = std::time::Instant::now();
    Builder::new().clock(clock.clone()).run(async {
        move_on().await?;
        fail().await?;
        shielded_cleanup().await?;
        moving_deadlines().await?;
        graceful_shutdown().await
    })?;

    println!(
        "\n{:.1} s of virtual time went by in {:.1?} of real time.",
        clock.now().as_secs_f64(),
        real.elapsed()
    );
    Ok(())
}
