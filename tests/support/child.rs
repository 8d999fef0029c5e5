//! Child processes, for the tests that run the example binaries (or their own test binary):
//! the examples built with this test binary's profile and target directory, and a child whose
//! stdout lines arrive on a channel, with every wait bounded and the child killed if the test
//! fails.
//!
//! Not a module of `support`, which every test file compiles: a test that needs it includes it
//! with `#[path = "support/child.rs"] mod child;`.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

/// How long a test waits for a line from a child, or for its exit, before it fails (never
/// reached when things work).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Builds the examples `names`, once per test binary, with the profile and target directory of
/// this test binary; returns the directory of the example binaries. Every call in one test
/// binary must name the same examples.
pub fn build_examples(names: &[&str]) -> PathBuf {
    static BUILT: OnceLock<(Vec<String>, PathBuf)> = OnceLock::new();
    let (built, dir) = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet"]);
        for name in names {
            cargo.args(["--example", name]);
        }
        cargo.arg("--target-dir").arg(target_dir).current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "building the examples {names:?} failed: {status}");
        (names.iter().map(|n| n.to_string()).collect(), profile_dir.join("examples"))
    });
    assert_eq!(built, names, "one set of examples per test binary");
    dir.clone()
}

/// A running child: its stdout lines arrive on a channel; killed if still running when
/// dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd`, its stdout read here, its stderr inherited.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let name =
            Path::new(cmd.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { name, child: Some(child), lines, seen: Vec::new() }
    }

    /// The next line on its stdout.
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!("{}: no line on stdout ({e}); output so far: {:?}", self.name, self.seen),
        }
    }

    /// Waits for a line equal to `want`.
    pub fn expect_line(&mut self, want: &str) {
        while self.next_line() != want {}
    }

    /// Waits for a line that contains `part`.
    pub fn expect_line_containing(&mut self, part: &str) {
        while !self.next_line().contains(part) {}
    }

    /// The address of a server that says `listening on <addr>` on its first line.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let first = self.next_line();
        first.strip_prefix("listening on ").and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            panic!("{}: the first line should be `listening on <addr>`, got {first:?}", self.name)
        })
    }

    /// Sends it the signal `name` (`INT`, `TERM`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill").args(["-s", name, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill -s {name} {pid} failed");
    }

    /// Waits for it to exit; its status and all its output (the lines read before included).
    pub fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(PATIENCE) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
                panic!("{} did not exit; output so far: {:?}", self.name, self.seen);
            }
        };
        // The reader thread ends at end of file, which comes with the exit.
        self.seen.extend(self.lines.iter());
        (status, std::mem::take(&mut self.seen))
    }

    /// Ctrl-C, then checks the graceful exit (status 130); all its output.
    pub fn interrupt_and_finish(self) -> Vec<String> {
        self.signal("INT");
        let name = self.name.clone();
        let (status, out) = self.finish();
        assert_eq!(status.code(), Some(130), "{name} exits with 130 after Ctrl-C: {out:?}");
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
