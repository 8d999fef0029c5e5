//! Counting a server's system calls for `tcp_echo --syscalls`, by name, over a window.
//!
//! Two tracers, both attached to the server process (every thread) from outside:
//!
//! - **perf** (the default when it works): `perf stat` counting the `syscalls:sys_enter_*`
//!   tracepoints, started disabled and switched on and off through its control FIFO, so that the
//!   window is exact. A counter per call costs well under a microsecond, so the server runs at
//!   nearly its untraced speed and batches events as it would untraced.
//! - **strace** (`--strace`, or when perf is missing): `strace -c -f -p`. It also counts the
//!   calls that failed (`EAGAIN` reads, for instance), but ptrace stops the server twice per call
//!   (microseconds each), so a slowed server finds more events per wait than an untraced one:
//!   its counts of waits per round trip come out lower than the truth.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a tracer may take to attach or detach.
const TRACER_DEADLINE: Duration = Duration::from_secs(20);

/// Which tracer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracerKind {
    Perf,
    Strace,
}

impl TracerKind {
    /// The name on the command line (`--trace`, internal).
    pub fn name(self) -> &'static str {
        match self {
            TracerKind::Perf => "perf",
            TracerKind::Strace => "strace",
        }
    }

    /// Parses [`TracerKind::name`].
    pub fn from_name(name: &str) -> Option<TracerKind> {
        [TracerKind::Perf, TracerKind::Strace].into_iter().find(|k| k.name() == name)
    }

    /// The tracer to use: strace if asked for, else perf if it can count tracepoints here, else
    /// strace if installed; `None` (with the reason) if neither works.
    pub fn detect(want_strace: bool) -> Result<TracerKind, String> {
        let works = |cmd: &mut Command| {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let strace = || works(Command::new("strace").args(["-c", "-o", "/dev/null", "true"]));
        if want_strace {
            return if strace() { Ok(TracerKind::Strace) } else { Err("strace is not installed".into()) };
        }
        // The very events the count uses (`syscalls:sys_enter_*`), not a neighbour of them.
        if works(Command::new("perf").args(["stat", "-e", "syscalls:sys_enter_*", "-o", "/dev/null", "true"]))
        {
            Ok(TracerKind::Perf)
        } else if strace() {
            Ok(TracerKind::Strace)
        } else {
            Err("neither `perf stat -e syscalls:sys_enter_*` nor strace works here \
                 (apt-get install -y strace)"
                .into())
        }
    }
}

/// System calls by name: (name, calls, failed calls if the tracer tells).
pub type Counts = Vec<(String, u64, Option<u64>)>;

/// A tracer attached to a process and counting.
pub struct Tracing {
    kind: TracerKind,
    child: Child,
    dir: PathBuf,
    /// perf's control FIFO (write) and acknowledgement FIFO (read).
    control: Option<(File, File)>,
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGINT to a process of ours (the tracers print their counts on it).
fn interrupt(child: &Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscall on a pid we spawned and have not reaped yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
}

/// Whether every thread of `pid` is traced (ptrace-attached).
fn all_threads_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim().parse::<u32>().is_ok_and(|p| p != 0))
        })
    })
}

impl Tracing {
    /// Attaches `kind` to every thread of process `pid` and returns once it counts.
    pub fn start(kind: TracerKind, pid: u32) -> io::Result<Tracing> {
        let dir = std::env::temp_dir().join(format!(
            "hatchery-bench-trace-{}-{:x}",
            std::process::id(),
            rand_seed()
        ));
        std::fs::create_dir_all(&dir)?;
        let out = dir.join("counts");
        let log = File::create(dir.join("log"))?;
        let mut cmd = match kind {
            TracerKind::Perf => {
                mkfifo(&dir.join("ctl"))?;
                mkfifo(&dir.join("ack"))?;
                let mut cmd = Command::new("perf");
                cmd.args(["stat", "-x", ",", "-e", "syscalls:sys_enter_*", "-D", "-1"])
                    .arg("--control")
                    .arg(format!("fifo:{},{}", dir.join("ctl").display(), dir.join("ack").display()))
                    .arg("-o")
                    .arg(&out)
                    .args(["-p", &pid.to_string()]);
                cmd
            }
            TracerKind::Strace => {
                let mut cmd = Command::new("strace");
                cmd.args(["-c", "-f", "-o"]).arg(&out).args(["-p", &pid.to_string()]);
                cmd
            }
        };
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()?;
        let mut t = Tracing { kind, child, dir, control: None };
        let deadline = Instant::now() + TRACER_DEADLINE;
        match kind {
            TracerKind::Perf => {
                // Open the acknowledgement FIFO first (perf opens its write end blocking), then
                // the control FIFO once perf has opened it.
                let ack =
                    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(t.dir.join("ack"))?;
                let ctl = loop {
                    match OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(t.dir.join("ctl"))
                    {
                        Ok(f) => break f,
                        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => t.check_alive(deadline)?,
                        Err(e) => return Err(e),
                    }
                };
                t.control = Some((ctl, ack));
                t.command("enable", deadline)?;
            }
            TracerKind::Strace => {
                while !all_threads_traced(pid) {
                    t.check_alive(deadline)?;
                }
            }
        }
        Ok(t)
    }

    /// Sleeps a little; fails if the tracer exited or the deadline passed.
    fn check_alive(&mut self, deadline: Instant) -> io::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            return Err(io::Error::other(format!("{} exited ({status}): {}", self.kind.name(), log.trim())));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{} did not attach in time", self.kind.name())));
        }
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    }

    /// Sends a command to perf and waits for its acknowledgement.
    fn command(&mut self, what: &str, deadline: Instant) -> io::Result<()> {
        let (ctl, _) = self.control.as_mut().expect("perf has a control FIFO");
        ctl.write_all(format!("{what}\n").as_bytes())?;
        // perf answers `ack\n` followed by a NUL byte.
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"ack\n") {
            let mut byte = [0; 16];
            let (_, ack) = self.control.as_mut().expect("perf has a control FIFO");
            match ack.read(&mut byte) {
                Ok(n) if n > 0 => got.extend_from_slice(&byte[..n]),
                Ok(_) => self.check_alive(deadline)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.check_alive(deadline)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stops counting, detaches, and returns the counts by name (non-zero ones only).
    pub fn stop(mut self) -> io::Result<Counts> {
        let deadline = Instant::now() + TRACER_DEADLINE;
        if self.kind == TracerKind::Perf {
            self.command("disable", deadline)?;
        }
        interrupt(&self.child);
        let status = self.child.wait()?;
        let text = std::fs::read_to_string(self.dir.join("counts")).unwrap_or_default();
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&self.dir);
        let counts = match self.kind {
            TracerKind::Perf => parse_perf(&text),
            TracerKind::Strace => parse_strace(&text),
        };
        if counts.is_empty() {
            return Err(io::Error::other(format!(
                "{} counted nothing ({status}): {} {}",
                self.kind.name(),
                text.trim(),
                log.trim()
            )));
        }
        Ok(counts)
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Some entropy for a unique directory name.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// `perf stat -x,` lines: `count,,syscalls:sys_enter_NAME,...` (or `<not counted>,...`).
fn parse_perf(text: &str) -> Counts {
    text.lines()
        .filter_map(|l| {
            let mut fields = l.split(',');
            let count = fields.next()?.trim().parse::<u64>().ok()?;
            let name = fields.nth(1)?.strip_prefix("syscalls:sys_enter_")?;
            (count > 0).then(|| (name.to_string(), count, None))
        })
        .collect()
}

/// `strace -c` table rows: `% time, seconds, usecs/call, calls, [errors,] syscall`.
fn parse_strace(text: &str) -> Counts {
    text.lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            if !(5..=6).contains(&t.len()) || t[0].parse::<f64>().is_err() {
                return None;
            }
            let name = *t.last()?;
            let calls = t[3].parse().ok()?;
            let errors = if t.len() == 6 { t[4].parse().ok()? } else { 0 };
            (name != "total").then(|| (name.to_string(), calls, Some(errors)))
        })
        .collect()
}
