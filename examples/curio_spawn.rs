//! Curio's `hello.py` (the countdown and the kid building the Millennium Falcon), made
//! structured: every task is spawned into a nursery, results come back through join handles,
//! and one child is cancelled through its handle.
//!
//! What it shows:
//! - `Nursery::spawn` returns a `JoinHandle`; awaiting it gives the child's value, so spawning
//!   several greeters and awaiting their handles in order is a "gather";
//! - children may borrow from the code that opened the nursery (the greeters borrow `names`);
//! - waiting for a child with a timeout (`move_on_after` around `&mut handle`), then cancelling
//!   just that child with `handle.cancel()`: its siblings are untouched, and the child can react
//!   to the cancellation (the kid saves its work) before it ends;
//! - the nursery waits for every child, including one nobody awaits, before it returns.
//!
//! Real time: about 3 seconds.
//!
//! ```text
//! cargo run --example curio_spawn
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use hatchery::{Error, move_on_after, nursery, sleep};

/// The tick of the countdown (Curio's example uses one second).
const TICK: Duration = Duration::from_millis(300);

/// Prints a line prefixed with the time elapsed since the program started.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:5.2}s] {}", elapsed(), format_args!($($arg)*))
    };
}

/// Seconds since the first call (made at the top of `main`).
fn elapsed() -> f64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// Greets `name` after thinking about it for `delay`. Borrows the name from the parent.
async fn greet(name: &str, delay: Duration) -> Result<String, Error> {
    sleep(delay).await?;
    log!("  greeter: done with {name}");
    Ok(format!("Hello, {name}!"))
}

async fn countdown(mut n: u32) -> Result<(), Error> {
    while n > 0 {
        log!("  T-minus {n}");
        sleep(TICK).await?;
        n -= 1;
    }
    Ok(())
}

/// Never finishes on its own: it has to be cancelled.
async fn kid() -> Result<(), Error> {
    log!("  kid: Building the Millennium Falcon in Minecraft");
    if let Err(cancelled) = sleep(Duration::from_secs(1000)).await {
        // Cancellation arrives as an error at a checkpoint, so the task can clean up (no
        // checkpoints here, see the `timeouts` example for a shielded cleanup) and then pass it on.
        log!("  kid: Fine. Saving my work. ({cancelled})");
        return Err(cancelled.into());
    }
    Ok(())
}

async fn parent() -> Result<(), Error> {
    // Owned by the parent; the greeters only borrow them.
    let names = ["Alice", "Bob", "Carol"].map(String::from);

    nursery(async |n| {
        let mut kid_task = n.spawn(kid());

        // Spawn one greeter per name; the last name gets the shortest delay, so they finish
        // in reverse order. Awaiting the handles in order still gives the results in order.
        let greeters: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| n.spawn(greet(name, TICK * (names.len() - i) as u32)))
            .collect();
        for greeter in greeters {
            // A handle resolves to `Err(JoinError)` if its child produced no value; `?` turns
            // that into an error of this body, which then cancels the nursery.
            let greeting = greeter.await?;
            log!("parent: {greeting}");
        }

        log!("parent: Let's go");
        n.spawn(countdown(3)).await?;
        log!("parent: We're leaving!");

        // A child nobody waits for: the nursery will, though.
        n.start_soon(async {
            log!("  packer: packing the car...");
            sleep(TICK * 3).await?;
            log!("  packer: car packed");
            Ok(())
        });

        // Give the kid a little while to finish. Awaiting `&mut kid_task` (rather than the
        // handle itself) keeps the handle usable if we time out.
        match move_on_after(TICK * 2, &mut kid_task).await? {
            Some(()) => log!("parent: the kid finished on time"),
            None => {
                log!("parent: I warned you!");
                // Cancels this one child only; its own scope absorbs the cancellation.
                kid_task.cancel();
            }
        }
        // The cancelled kid has no value, so its handle reports `JoinError::ChildCancelled`.
        // That is the kid's cancellation, not ours: `?` would make it an error of this body
        // (failing the nursery), so look at it instead.
        match kid_task.await {
            Ok(()) => log!("parent: kid done"),
            Err(why) => log!("parent: kid stopped: {why}"),
        }
        log!("parent: Leaving (the nursery still waits for the packer)");
        Ok(())
    })
    .await?;
    log!("parent: nursery closed, every child has finished");
    Ok(())
}

fn main() -> Result<(), Error> {
    elapsed(); // start the stopwatch
    hatchery::run(parent())
}
