//! Trio's tutorial, "Alice and Bob", in hatchery: a parent opens a nursery and starts two
//! children that each sleep for one second.
//!
//! What it shows:
//! - a nursery is a block that does not end until every child started in it has ended, so
//!   "parent: all done!" always comes last;
//! - the children run concurrently: two one-second naps take one second in total;
//! - the order in which ready children run is deliberately not fixed (hatchery, like Trio,
//!   sometimes reverses a batch), so run it a few times and watch child1 and child2 swap.
//!
//! ```text
//! cargo run --example hello_nursery
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use hatchery::{Error, nursery, sleep};

/// Prints a line prefixed with the time elapsed since the program started.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:5.3}s] {}", elapsed(), format_args!($($arg)*))
    };
}

/// Seconds since the first call (made at the top of `main`).
fn elapsed() -> f64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

async fn child1() -> Result<(), Error> {
    log!("  child1: started! sleeping now...");
    // `sleep` is a checkpoint: if the nursery were cancelled, it would return `Err(Cancelled)`
    // and `?` would end the child right here.
    sleep(Duration::from_secs(1)).await?;
    log!("  child1: exiting!");
    Ok(())
}

async fn child2() -> Result<(), Error> {
    log!("  child2: started! sleeping now...");
    sleep(Duration::from_secs(1)).await?;
    log!("  child2: exiting!");
    Ok(())
}

async fn parent() -> Result<(), Error> {
    log!("parent: started!");
    nursery(async |n| {
        log!("parent: spawning child1...");
        // `start_soon` only schedules the child: it starts running once the body reaches an
        // `.await` that yields, or returns.
        n.start_soon(child1());

        log!("parent: spawning child2...");
        n.start_soon(child2());

        log!("parent: waiting for children to finish...");
        // Returning from the body does not end the nursery: `.await` below resumes only when
        // both children are done.
        Ok(())
    })
    .await?;
    log!("parent: all done!");
    Ok(())
}

fn main() -> Result<(), Error> {
    elapsed(); // start the stopwatch
    hatchery::run(parent())?;
    println!("two children slept 1 s each, concurrently: {:.3} s in total", elapsed());
    Ok(())
}
