//! A pipeline: a producer, a pool of workers and a collector, joined by memory channels, shut
//! down by closing, with a deadline on the whole run.
//!
//! What it shows:
//! - backpressure: the producer sends jobs into a bounded channel (capacity 4), so it runs at
//!   most four jobs ahead of the workers;
//! - a worker pool: every worker holds a clone of the job receiver, and each job goes to exactly
//!   one of them; results go to the collector through a rendezvous channel (capacity 0), so a
//!   worker's send completes only when the collector takes the result;
//! - shutdown by closing: the producer drops its sender when it is done; the workers drain the
//!   buffered jobs, see the end of the channel and drop their result senders; the collector sees
//!   the end of *its* channel right after the last result. Nobody needs a sentinel value or a
//!   "done" flag;
//! - a deadline on the whole pipeline (`fail_after`): a second run gets too little time, every
//!   task is cancelled, and the job the producer was trying to send comes back in the error
//!   instead of being lost.
//!
//! It runs on hatchery's virtual clock (`MockClock` with autojump), so the timestamps are exact
//! and the run takes a few milliseconds.
//!
//! ```text
//! cargo run --example pipeline
//! ```

use std::cell::RefCell;
use std::time::Duration;

use hatchery::testing::MockClock;
use hatchery::{Builder, Error, Receiver, Sender, channel, fail_after, now, nursery, sleep};

/// Prints a line stamped with the (virtual) time.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("[t={:5.2}s] {}", now().as_secs_f64(), format_args!($($arg)*))
    };
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a worker hands to the collector.
#[derive(Debug)]
struct Done {
    job: u32,
    worker: usize,
    square: u64,
}

/// Queues jobs `1..=count`, then closes the job channel by dropping its sender.
async fn producer(jobs: Sender<u32>, count: u32) -> Result<(), Error> {
    for id in 1..=count {
        if let Err(e) = jobs.send(id).await {
            if e.is_cancelled() {
                // The send was cancelled before any worker could take the job: it comes back.
                say!("producer: cancelled; job {} was handed back, not lost", e.value);
            }
            return Err(e.into());
        }
    }
    say!("producer: all {count} jobs queued; closing the job channel");
    Ok(())
}

/// Takes jobs until the job channel ends, and hands each result to the collector.
async fn worker(w: usize, jobs: Receiver<u32>, results: Sender<Done>) -> Result<(), Error> {
    loop {
        let job = match jobs.recv().await {
            Ok(job) => job,
            Err(e) if e.is_end_of_channel() => {
                say!("worker {w}: no more jobs; done");
                return Ok(()); // dropping `results` closes this worker's result sender
            }
            Err(e) => return Err(e.into()),
        };
        // Pretend work: 100 to 300 ms.
        sleep(ms(100 * (u64::from(job) % 3 + 1))).await?;
        results.send(Done { job, worker: w, square: u64::from(job) * u64::from(job) }).await?;
    }
}

/// Collects results until every worker has closed its result sender.
async fn collector(results: Receiver<Done>, into: &RefCell<Vec<Done>>) -> Result<(), Error> {
    loop {
        match results.recv().await {
            Ok(done) => into.borrow_mut().push(done),
            Err(e) if e.is_end_of_channel() => {
                say!("collector: every worker is done");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The whole pipeline; results land in `into` as they arrive.
async fn pipeline(jobs: u32, workers: usize, into: &RefCell<Vec<Done>>) -> Result<(), Error> {
    let (job_tx, job_rx) = channel::<u32>(4);
    let (result_tx, result_rx) = channel::<Done>(0);
    nursery(async |n| {
        n.start_soon(producer(job_tx, jobs));
        for w in 0..workers {
            n.start_soon(worker(w, job_rx.clone(), result_tx.clone()));
        }
        // From here on only the tasks hold handles, so closing works end to end.
        drop(job_rx);
        drop(result_tx);
        collector(result_rx, into).await
    })
    .await?;
    Ok(())
}

fn report(results: &[Done], workers: usize) {
    let mut per_worker = vec![0; workers];
    for d in results {
        per_worker[d.worker] += 1;
    }
    let mut jobs: Vec<u32> = results.iter().map(|d| d.job).collect();
    jobs.sort();
    let sum: u64 = results.iter().map(|d| d.square).sum();
    say!("{} results (jobs {jobs:?}), sum of squares {sum}, per worker {per_worker:?}", results.len());
}

fn main() -> Result<(), Error> {
    Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).seed(7).run(async {
        println!("== a pipeline that finishes within its deadline");
        let results = RefCell::new(Vec::new());
        fail_after(Duration::from_secs(5), pipeline(12, 3, &results)).await?;
        report(&results.borrow(), 3);

        println!("\n== the same pipeline with a deadline that is too tight");
        let start = now();
        let results = RefCell::new(Vec::new());
        match fail_after(ms(350), pipeline(12, 3, &results)).await {
            Err(Error::TooSlow(e)) => say!("deadline: {e} ({:?} after the start)", now() - start),
            other => panic!("expected the deadline to fire, got {other:?}"),
        }
        report(&results.borrow(), 3);
        Ok(())
    })
}
