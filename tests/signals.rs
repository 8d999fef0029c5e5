//! Signals (S11.x, restated for Rust): the `Signals` receiver and `ctrl_c_cancels`.
//!
//! Signals are process-wide and the test harness runs tests on parallel threads of one
//! process, so every test holds `SERIAL` (the child-process tests too, so that no descriptor
//! opens while `dropping_receivers_closes_their_descriptors` counts them). A signal
//! is raised only while a receiver for it exists (otherwise its default action would end the
//! test binary). `raise` runs the handlers on the calling thread before it returns.
//!
//! What cannot run in this process runs in a child: the `ctrl_c` example (graceful shutdown,
//! exit statuses, a second Ctrl-C ending it at once), built with cargo and sent signals with
//! `kill`; and this test binary itself, re-run in a mode that checks that dropping the last
//! receiver gives a signal its default action back.

mod support;

#[path = "support/child.rs"]
mod child;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::pin::pin;
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};

use child::{Proc, build_examples};
use hatchery::signal::{Outcome, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, Signals, ctrl_c_cancels};
use hatchery::testing::{self, assert_checkpoints, registrations, wait_all_tasks_blocked};
use hatchery::{CancelScope, Cancelled, move_on_after, now, nursery, sleep, sleep_forever};
use signal_hook::low_level::raise;
use support::{Log, at, in_cancelled_scope, next, poll_once, secs};

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of this file (a failed test must not stop the others).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The receiver

#[test]
fn recv_reports_raised_signals_in_ascending_order() {
    let _serial = serial();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR2, SIGUSR1, SIGUSR2]).unwrap();
        assert_eq!(signals.signals(), [SIGUSR1, SIGUSR2], "sorted, without duplicates");
        raise(SIGUSR2).unwrap();
        raise(SIGUSR1).unwrap();
        assert_eq!(signals.recv().await, Ok(SIGUSR1));
        assert_eq!(signals.recv().await, Ok(SIGUSR2));
        assert_eq!(signals.try_recv(), None);
        assert_eq!(now(), at(0));
    });
}

#[test]
fn repeated_signals_are_coalesced() {
    let _serial = serial();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR1]).unwrap();
        for _ in 0..3 {
            raise(SIGUSR1).unwrap();
        }
        assert_eq!(signals.recv().await, Ok(SIGUSR1));
        assert_eq!(signals.try_recv(), None);
        // A wait now only ends with a new signal.
        assert_eq!(move_on_after(secs(1), signals.recv()).await, Ok(None));
        assert_eq!(now(), at(1));
    });
}

#[test]
fn recv_waits_for_a_signal_that_arrives_later() {
    let _serial = serial();
    let log = Log::new();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR2]).unwrap();
        nursery(async |n| {
            let log2 = log.clone();
            let signals = &mut signals;
            n.start_soon(async move {
                let s = assert_checkpoints(signals.recv()).await?;
                log2.push(format!("got {s} at {}", now().since_origin().as_secs()));
                Ok(())
            });
            sleep(secs(2)).await?;
            wait_all_tasks_blocked().await?;
            log.push("raise");
            raise(SIGUSR2).unwrap();
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["raise".to_string(), format!("got {SIGUSR2} at 2")]);
}

#[test]
fn recv_is_a_checkpoint_even_when_a_signal_is_pending_s2_1() {
    let _serial = serial();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR1]).unwrap();
        raise(SIGUSR1).unwrap();
        assert_eq!(assert_checkpoints(signals.recv()).await, Ok(SIGUSR1));
    });
}

#[test]
fn a_cancelled_recv_consumes_nothing() {
    let _serial = serial();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR1, SIGUSR2]).unwrap();
        let base = registrations();
        // Cancelled on entry, with a signal pending: it stays pending.
        raise(SIGUSR1).unwrap();
        let r = in_cancelled_scope(signals.recv()).await;
        assert!(r.is_err());
        assert_eq!(signals.recv().await, Ok(SIGUSR1));
        // Cancelled while waiting: nothing registered is left, and a later signal is kept.
        assert_eq!(move_on_after(secs(3), signals.recv()).await, Ok(None));
        assert_eq!(now(), at(3));
        assert_eq!(registrations(), base);
        raise(SIGUSR2).unwrap();
        assert_eq!(signals.recv().await, Ok(SIGUSR2));
    });
}

#[test]
fn a_dropped_recv_consumes_nothing() {
    let _serial = serial();
    // A budget of 0: every schedule point yields, so the future can be dropped there.
    testing::builder().yield_budget(0).run(async {
        let mut signals = Signals::new(&[SIGUSR1, SIGUSR2]).unwrap();
        raise(SIGUSR1).unwrap();
        raise(SIGUSR2).unwrap();
        {
            // Dropped after it took the signals from the handlers, before it returned.
            let polled = poll_once(pin!(signals.recv())).await;
            assert!(polled.is_pending(), "it passes its schedule point first");
        }
        assert_eq!(signals.try_recv(), Some(SIGUSR1));
        assert_eq!(signals.try_recv(), Some(SIGUSR2));
        assert_eq!(signals.try_recv(), None);
        // With signals already buffered: a recv dropped at its schedule point took none of them.
        raise(SIGUSR1).unwrap();
        raise(SIGUSR2).unwrap();
        assert_eq!(signals.recv().await, Ok(SIGUSR1), "this one also buffered SIGUSR2");
        {
            let polled = poll_once(pin!(signals.recv())).await;
            assert!(polled.is_pending(), "it passes its schedule point before taking anything");
        }
        assert_eq!(signals.try_recv(), Some(SIGUSR2), "the buffered signal is still there");
        assert_eq!(signals.try_recv(), None);
    });
}

#[test]
fn every_receiver_gets_every_signal() {
    let _serial = serial();
    testing::run(async {
        let mut a = Signals::new(&[SIGUSR1]).unwrap();
        let mut b = Signals::new(&[SIGUSR1, SIGUSR2]).unwrap();
        raise(SIGUSR1).unwrap();
        assert_eq!(a.recv().await, Ok(SIGUSR1));
        assert_eq!(b.recv().await, Ok(SIGUSR1));
        drop(a);
        raise(SIGUSR1).unwrap(); // b still listens, so this is safe and b gets it
        assert_eq!(b.recv().await, Ok(SIGUSR1));
    });
}

#[test]
fn the_stream_yields_signals_and_reports_cancellation() {
    let _serial = serial();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR2]).unwrap();
        raise(SIGUSR2).unwrap();
        assert_eq!(next(&mut signals).await, Some(Ok(SIGUSR2)));
        // In a cancelled scope each new item is a cancellation, and consumes nothing.
        raise(SIGUSR2).unwrap();
        let r = in_cancelled_scope(next(&mut signals)).await;
        assert!(matches!(r, Some(Err(_))));
        assert_eq!(next(&mut signals).await, Some(Ok(SIGUSR2)));
        // A wait that a deadline cancels.
        let base = registrations();
        let r = move_on_after(secs(1), async { next(&mut signals).await.unwrap() }).await;
        assert_eq!(r, Ok(None));
        assert_eq!(registrations(), base, "the cancelled wait left nothing registered");
        raise(SIGUSR2).unwrap();
        assert_eq!(next(&mut signals).await, Some(Ok(SIGUSR2)));
    });
}

/// A wait whose future is dropped leaves no wait behind: the next item, in a cancelled scope,
/// is a cancellation even though a signal is ready, and the signal stays for later.
#[test]
fn the_stream_checks_cancellation_after_a_dropped_wait() {
    let _serial = serial();
    testing::run(async {
        let mut signals = Signals::new(&[SIGUSR1]).unwrap();
        assert!(poll_once(pin!(next(&mut signals))).await.is_pending());
        raise(SIGUSR1).unwrap();
        wait_all_tasks_blocked().await.unwrap(); // the loop sees the pipe readable
        let r = in_cancelled_scope(next(&mut signals)).await;
        assert!(matches!(r, Some(Err(_))), "{r:?}");
        assert_eq!(signals.try_recv(), Some(SIGUSR1), "the cancelled item consumed nothing");
        // With a `try_recv` after the dropped wait, too.
        assert!(poll_once(pin!(next(&mut signals))).await.is_pending());
        raise(SIGUSR1).unwrap();
        assert_eq!(signals.try_recv(), Some(SIGUSR1));
        raise(SIGUSR1).unwrap();
        wait_all_tasks_blocked().await.unwrap(); // the loop sees the pipe readable
        let r = in_cancelled_scope(next(&mut signals)).await;
        assert!(matches!(r, Some(Err(_))), "{r:?}");
        assert_eq!(next(&mut signals).await, Some(Ok(SIGUSR1)));
    });
}

#[test]
fn invalid_signal_sets_are_rejected() {
    let _serial = serial();
    testing::run(async {
        for set in [&[][..], &[0], &[-3], &[200], &[9], &[19], &[11]] {
            let e = Signals::new(set).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{set:?}: {e}");
        }
        let e = Signals::new(&[signal_hook::consts::SIGKILL]).unwrap_err();
        assert_eq!(e.to_string(), "signal SIGKILL cannot be handled");
    });
}

#[test]
fn a_receiver_belongs_to_its_run() {
    let _serial = serial();
    let mut signals = testing::run(async { Signals::new(&[SIGUSR1]).unwrap() });
    let r = catch_unwind(AssertUnwindSafe(|| testing::run(async { signals.recv().await })));
    let payload = r.expect_err("using it in another run panics");
    let msg =
        payload.downcast_ref::<&str>().copied().or(payload.downcast_ref::<String>().map(String::as_str));
    assert!(msg.unwrap().contains("belongs to the run that created it"), "{msg:?}");
    // Without waiting, it still works anywhere (and it still listens).
    raise(SIGUSR1).unwrap();
    assert_eq!(signals.try_recv(), Some(SIGUSR1));
}

#[cfg(target_os = "linux")]
#[test]
fn dropping_receivers_closes_their_descriptors() {
    let _serial = serial();
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    testing::run(async {
        drop(Signals::new(&[SIGUSR1]).unwrap()); // anything allocated once, allocated now
        let before = open_fds();
        for _ in 0..50 {
            let mut s = Signals::new(&[SIGUSR1, SIGUSR2]).unwrap();
            raise(SIGUSR2).unwrap();
            assert_eq!(s.recv().await, Ok(SIGUSR2));
        }
        assert_eq!(open_fds(), before);
    });
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C as cancellation (in this process: one signal at a time)

#[test]
fn ctrl_c_cancels_the_body_and_its_children_clean_up() {
    let _serial = serial();
    let log = Log::new();
    let out = testing::run(ctrl_c_cancels(async {
        nursery(async |n| {
            for id in 0..2 {
                let log = log.clone();
                n.start_soon(async move {
                    let Err(c) = sleep_forever().await;
                    assert_eq!(c.source(), hatchery::CancelSource::Shutdown);
                    log.push(format!("{id} cancelled: {}", c.reason().unwrap_or("?")));
                    CancelScope::new().shielded().run(sleep(secs(5))).await?; // cleanup
                    log.push(format!("{id} clean at {}", now().since_origin().as_secs()));
                    Err::<(), _>(io::Error::from(c))
                });
            }
            wait_all_tasks_blocked().await?;
            sleep(secs(1)).await?;
            raise(SIGINT)?;
            sleep_forever().await?;
            Ok::<_, io::Error>(())
        })
        .await?;
        Ok::<_, io::Error>("not reached")
    }));
    let outcome = out.unwrap();
    assert_eq!(outcome, Outcome::Interrupted { signal: SIGINT, value: None });
    assert_eq!(outcome.exit_status(), 130);
    let mut l = log.take();
    l.sort();
    assert_eq!(
        l,
        ["0 cancelled: SIGINT received", "0 clean at 6", "1 cancelled: SIGINT received", "1 clean at 6"]
    );
}

#[test]
fn ctrl_c_cancels_reports_completion_without_a_signal() {
    let _serial = serial();
    let out = testing::run(ctrl_c_cancels(async {
        sleep(secs(1)).await?;
        Ok::<_, io::Error>(5)
    }));
    let outcome = out.unwrap();
    assert_eq!(outcome, Outcome::Completed(5));
    assert_eq!((outcome.exit_status(), outcome.signal()), (0, None));
    assert_eq!(outcome.into_value(), Some(5));
}

#[test]
fn ctrl_c_cancels_keeps_a_value_the_body_returned_anyway() {
    let _serial = serial();
    let out = testing::run(ctrl_c_cancels(async {
        raise(SIGTERM)?;
        // No checkpoint after the signal: the body finishes with its value.
        Ok::<_, io::Error>(7)
    }));
    let outcome = out.unwrap();
    assert_eq!(outcome, Outcome::Interrupted { signal: SIGTERM, value: Some(7) });
    assert_eq!(outcome.exit_status(), 143);
    assert!(outcome.is_interrupted());
}

#[test]
fn ctrl_c_cancels_passes_errors_and_outer_cancellations_through() {
    let _serial = serial();
    testing::run(async {
        let e = ctrl_c_cancels(async { Err::<(), _>(io::Error::other("bind failed")) }).await.unwrap_err();
        assert_eq!(e.to_string(), "bind failed");
        // An enclosing deadline is the enclosing scope's business.
        let r = move_on_after(secs(2), async {
            ctrl_c_cancels(async {
                sleep(secs(10)).await?;
                Ok::<_, io::Error>(())
            })
            .await
        })
        .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert_eq!(now(), at(2));
    });
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// The path of the `ctrl_c` example, built once per test run.
fn ctrl_c_example() -> PathBuf {
    build_examples(&["ctrl_c"]).join("ctrl_c")
}

/// Runs the `ctrl_c` example with `args` and sends it the signal `first` once it is ready;
/// with `second`, waits until its three workers have begun their cleanup and sends that too.
/// Returns its exit status and output.
fn run_example(args: &[&str], first: &str, second: Option<&str>) -> (ExitStatus, Vec<String>) {
    let mut p = Proc::spawn(Command::new(ctrl_c_example()).args(args));
    p.expect_line_containing("ready");
    p.signal(first);
    if let Some(second) = second {
        for _ in 0..3 {
            p.expect_line_containing("worker");
        }
        p.signal(second);
    }
    p.finish()
}

#[test]
fn the_example_shuts_down_gracefully_on_sigint_with_status_130() {
    let _serial = serial();
    let (status, out) = run_example(&[], "INT", None);
    assert_eq!(status.code(), Some(130), "{out:?}");
    for id in 0..3 {
        assert!(
            out.contains(&format!(
                "worker {id}: cancelled due to shutdown with reason 'SIGINT received'; cleaning up"
            )),
            "{out:?}"
        );
        assert!(out.contains(&format!("worker {id}: clean")), "{out:?}");
    }
    assert_eq!(out.last().map(String::as_str), Some("interrupted by signal 2, exit status 130"));
}

#[test]
fn the_example_shuts_down_gracefully_on_sigterm_with_status_143() {
    let _serial = serial();
    let (status, out) = run_example(&[], "TERM", None);
    assert_eq!(status.code(), Some(143), "{out:?}");
    assert_eq!(out.last().map(String::as_str), Some("interrupted by signal 15, exit status 143"));
}

#[test]
fn a_second_ctrl_c_during_cleanup_exits_at_once_with_status_130() {
    let _serial = serial();
    // The second signal comes while every worker waits in a cleanup that never ends.
    let (status, out) = run_example(&["--stuck-cleanup"], "INT", Some("INT"));
    assert_eq!(status.code(), Some(130), "{out:?}");
    assert!(!out.iter().any(|l| l.ends_with(": clean")), "no cleanup finished: {out:?}");
    assert!(!out.iter().any(|l| l.starts_with("interrupted")), "main did not get to report: {out:?}");
}

#[test]
fn a_sigterm_then_a_sigint_also_exits_at_once() {
    let _serial = serial();
    let (status, out) = run_example(&["--stuck-cleanup"], "TERM", Some("INT"));
    assert_eq!(status.code(), Some(130), "the second signal's status: {out:?}");
}

/// Set (to a mode) in the environment of a child run of this test binary.
const CHILD_MODE: &str = "HATCHERY_SIGNALS_TEST_CHILD";

/// Re-runs this test binary with only [`child_process_entry`], in `mode`.
fn run_self_as_child(mode: &str) -> ExitStatus {
    let mut p = Proc::spawn(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_process_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_MODE, mode),
    );
    p.expect_line_containing("child ready");
    p.finish().0
}

/// [`run_self_as_child`], started with SIGINT ignored (through `sh`'s `trap`, as a shell
/// script's background job starts); its output too.
fn run_self_as_child_ignoring_sigint(mode: &str) -> (ExitStatus, Vec<String>) {
    let mut p = Proc::spawn(
        Command::new("sh")
            .args(["-c", "trap '' INT; exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "child_process_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_MODE, mode),
    );
    p.expect_line_containing("child ready");
    p.finish()
}

/// Does nothing in a normal test run; in a child run, what its mode says.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_MODE) else { return };
    println!("child ready");
    match mode.as_str() {
        "drop-restores-default" => {
            hatchery::run(async {
                let signals = Signals::new(&[SIGUSR2]).unwrap();
                raise(SIGUSR2).unwrap(); // caught: the process lives on
                drop(signals);
            });
            raise(SIGUSR2).unwrap(); // the default action again: terminate
            println!("still alive");
            std::process::exit(0);
        }
        "ignored-sigint" => {
            let out = hatchery::run(ctrl_c_cancels(async {
                raise(SIGINT).unwrap(); // ignored since the process started: nothing happens
                hatchery::sleep(std::time::Duration::from_millis(50)).await?;
                Ok::<_, std::io::Error>(7)
            }));
            println!("outcome: {:?}", out.unwrap());
            let out = hatchery::run(ctrl_c_cancels(async {
                raise(SIGTERM).unwrap(); // not ignored: taken over as usual
                hatchery::sleep_forever().await?;
                Ok::<_, std::io::Error>(8)
            }));
            println!("outcome: {:?}", out.unwrap());
            std::process::exit(0);
        }
        "exit-by-signal" => {
            let out = hatchery::run(ctrl_c_cancels(async {
                raise(SIGTERM).unwrap();
                hatchery::sleep_forever().await?;
                Ok::<_, std::io::Error>(())
            }));
            let outcome = out.unwrap();
            println!("interrupted: {:?}", outcome.signal());
            let _ = outcome.exit_by_signal();
            println!("still alive");
            std::process::exit(0);
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn a_sigint_ignored_since_the_process_started_stays_ignored_by_ctrl_c_cancels() {
    let _serial = serial();
    let (status, out) = run_self_as_child_ignoring_sigint("ignored-sigint");
    assert_eq!(status.code(), Some(0), "{out:?}");
    assert!(out.contains(&"outcome: Completed(7)".to_string()), "{out:?}");
    assert!(out.contains(&"outcome: Interrupted { signal: 15, value: None }".to_string()), "{out:?}");
}

#[test]
fn exit_by_signal_ends_an_interrupted_run_by_that_signal() {
    let _serial = serial();
    let status = run_self_as_child("exit-by-signal");
    assert_eq!(status.signal(), Some(SIGTERM), "died by SIGTERM, after its cleanup: {status:?}");
}

#[test]
fn dropping_the_last_receiver_restores_the_default_action() {
    let _serial = serial();
    let status = run_self_as_child("drop-restores-default");
    assert_eq!(status.signal(), Some(SIGUSR2), "killed by the signal, as by default: {status:?}");
}
