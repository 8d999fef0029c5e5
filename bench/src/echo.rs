//! What the echo workloads (`tcp_echo`, `idle_conns`) share: the probe that measures each
//! runtime's echo server, the blocking client that runs in a child process, and the process
//! plumbing (descriptor limit, CPU time, children that die with their parent).
//!
//! # One measurement
//!
//! The server is the measured process (a fresh `--child` process per measurement). Its runtime
//! binds 127.0.0.1:0 and calls [`EchoRun::start_client`], which starts this binary again as
//! `--client` (a grandchild). The client connects every connection and waits; the server
//! accepts them all, each handler task parks in its first read, and after
//! [`SETTLE`](crate::common::SETTLE) the server calls [`EchoRun::go`]: it notes its clock, CPU
//! time and memory (and attaches the tracer with `--syscalls`), then writes `go` to the client's
//! stdin. The client's threads start their round trips; when every handler has seen end of
//! stream, the server calls [`EchoRun::stop`].
//! [`EchoRun::finish`] checks the client's verdict (every echo came back intact) and the byte
//! counts on both sides, and turns the figures into a [`Sample`].

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::{ECHO_MSG, Sample, Workload, proc_status_kib};
use crate::syscalls::{Counts, TracerKind, Tracing};

/// Raises the soft limit on open descriptors to the hard limit (10,000 idle connections need
/// more than the usual 1,024), in this process and so in the children it starts.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// The CPU time (user + system) this process has used, every thread included.
pub fn process_cpu() -> Duration {
    // SAFETY: all-zero is a valid `rusage`, which the call then fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill in.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Starts `cmd` as a child that the kernel kills if this process dies first (a benchmark
/// aborted by its watchdog leaves no server or client behind).
pub fn spawn_tied(cmd: &mut Command) -> io::Result<Child> {
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe call.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    cmd.spawn()
}

/// One measurement of an echo server (see the module docs).
pub struct EchoRun {
    workload: Workload,
    conns: u64,
    /// Round trips per connection (`tcp_echo`); 1 for `idle_conns`.
    per_conn: u64,
    tracer: Option<TracerKind>,
    rss_before_kib: u64,
    client: RefCell<Option<Child>>,
    /// Wall clock and CPU time at `go` and at `stop`.
    start: Cell<Option<(Instant, Duration)>>,
    end: Cell<Option<(Instant, Duration)>>,
    /// `VmRSS` and `VmHWM` at `go`, in KiB.
    rss_at_go_kib: Cell<(u64, u64)>,
    tracing: RefCell<Option<Tracing>>,
    counts: RefCell<Option<Counts>>,
}

impl EchoRun {
    /// A measurement of `workload` (`tcp_echo`: n round trips over `echo_conns` connections;
    /// `idle_conns`: n connections), counting system calls with `tracer` if given. Notes
    /// `VmRSS` now, before any runtime.
    pub fn new(workload: Workload, n: u64, echo_conns: u64, tracer: Option<TracerKind>) -> EchoRun {
        let (conns, per_conn) = match workload {
            Workload::TcpEcho => {
                let conns = echo_conns.clamp(1, n.max(1));
                (conns, (n / conns).max(1))
            }
            Workload::IdleConns => (n.max(1), 1),
            other => panic!("{} is not an echo workload", other.name()),
        };
        EchoRun {
            workload,
            conns,
            per_conn,
            tracer,
            rss_before_kib: proc_status_kib("VmRSS"),
            client: RefCell::new(None),
            start: Cell::new(None),
            end: Cell::new(None),
            rss_at_go_kib: Cell::new((0, 0)),
            tracing: RefCell::new(None),
            counts: RefCell::new(None),
        }
    }

    /// How many connections the server must accept.
    pub fn conns(&self) -> u64 {
        self.conns
    }

    /// Starts the client process against `addr`; it connects and waits for `go`.
    pub fn start_client(&self, addr: SocketAddr) {
        let exe = std::env::current_exe().expect("cannot find this executable");
        let mut cmd = Command::new(exe);
        cmd.arg("--client");
        match self.workload {
            Workload::TcpEcho => {
                cmd.args(["echo", &addr.to_string(), &self.conns.to_string(), &self.per_conn.to_string()])
            }
            _ => cmd.args(["idle", &addr.to_string(), &self.conns.to_string()]),
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        *self.client.borrow_mut() = Some(spawn_tied(&mut cmd).expect("cannot start the client process"));
    }

    /// Every connection is accepted and its handler parked: measure, then let the client go.
    /// Blocks the runtime's thread for a moment (nothing else has anything to do).
    pub fn go(&self) {
        self.rss_at_go_kib.set((proc_status_kib("VmRSS"), proc_status_kib("VmHWM")));
        if let Some(kind) = self.tracer {
            let t = Tracing::start(kind, std::process::id())
                .unwrap_or_else(|e| panic!("cannot attach {}: {e}", kind.name()));
            *self.tracing.borrow_mut() = Some(t);
        }
        self.start.set(Some((Instant::now(), process_cpu())));
        let mut client = self.client.borrow_mut();
        let stdin = client.as_mut().and_then(|c| c.stdin.as_mut()).expect("the client was not started");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("the client process went away");
    }

    /// Every handler has finished (the client closed every connection).
    pub fn stop(&self) {
        self.end.set(Some((Instant::now(), process_cpu())));
        if let Some(t) = self.tracing.borrow_mut().take() {
            *self.counts.borrow_mut() = Some(t.stop().unwrap_or_else(|e| panic!("tracer failed: {e}")));
        }
    }

    /// Checks both sides' byte counts (`echoed`: what the server's handlers echoed in all) and
    /// the client's verdict; returns the figures.
    pub fn finish(self, rt: &str, echoed: u64) -> Sample {
        let what = format!("{rt} {}", self.workload.name());
        let client = self.client.into_inner().expect("the client was not started");
        let out = client.wait_with_output().expect("cannot wait for the client process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: client failed ({}): {stdout}", out.status);
        let client_bytes: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ok "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{what}: no verdict from the client: {stdout}"));
        let want = self.conns * self.per_conn * ECHO_MSG as u64;
        crate::common::check(&format!("{what} (bytes the client got back intact)"), client_bytes, want);
        crate::common::check(&format!("{what} (bytes the server echoed)"), echoed, want);
        match self.workload {
            Workload::TcpEcho => {
                let (t0, cpu0) = self.start.get().expect("go was not called");
                let (t1, cpu1) = self.end.get().expect("stop was not called");
                let trips = (self.conns * self.per_conn) as f64;
                let per = |v: u64| v as f64 / trips;
                let syscalls: crate::common::PerOp = self
                    .counts
                    .into_inner()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, calls, errors)| (name, per(calls), errors.map_or(f64::NAN, per)))
                    .collect();
                let total = if syscalls.is_empty() { f64::NAN } else { syscalls.iter().map(|s| s.1).sum() };
                Sample {
                    values: vec![
                        trips / (t1 - t0).as_secs_f64(),
                        (cpu1 - cpu0).as_secs_f64() * 1e6 / trips,
                        total,
                    ],
                    syscalls,
                }
            }
            _ => {
                let (rss, hwm) = self.rss_at_go_kib.get();
                let per_conn =
                    |kib: u64| kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0 / self.conns as f64;
                Sample::of(vec![per_conn(rss), per_conn(hwm)])
            }
        }
    }
}

/// The message the client sends as round trip `i` of connection `c` (and must get back).
fn message(c: u64, i: u64) -> [u8; ECHO_MSG] {
    let mut m = [0u8; ECHO_MSG];
    m[..8].copy_from_slice(&c.to_le_bytes());
    m[8..16].copy_from_slice(&i.to_le_bytes());
    for (k, b) in m[16..].iter_mut().enumerate() {
        *b = (c as usize + i as usize + k) as u8;
    }
    m
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends one message and checks that it comes back intact.
fn round_trip(s: &mut TcpStream, c: u64, i: u64) -> io::Result<()> {
    let m = message(c, i);
    s.write_all(&m)?;
    read_echo(s, &m, c, i)
}

/// Reads the echo of `m`, round trip `i` of connection `c`, and checks that it is intact.
fn read_echo(s: &mut TcpStream, m: &[u8; ECHO_MSG], c: u64, i: u64) -> io::Result<()> {
    let mut back = [0u8; ECHO_MSG];
    s.read_exact(&mut back)?;
    if back != *m {
        return Err(io::Error::other(format!("connection {c}, round trip {i}: the echo differs")));
    }
    Ok(())
}

/// Waits for the server's `go` on stdin.
fn wait_for_go() -> io::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        return Err(io::Error::other("the server went away before `go`"));
    }
    Ok(())
}

/// `--client echo ADDR CONNS PER_CONN` and `--client idle ADDR CONNS`: the blocking client, in
/// its own process. Prints `ok BYTES` (bytes that came back intact) and exits.
pub fn client_main(args: &[String]) -> ExitCode {
    let parsed = match args {
        [kind, addr, conns, rest @ ..] => {
            let n = |s: &String| s.parse::<u64>().ok();
            match (kind.as_str(), addr.parse::<SocketAddr>(), n(conns), rest) {
                ("echo", Ok(a), Some(c), [per]) => n(per).map(|p| (a, c, Some(p))),
                ("idle", Ok(a), Some(c), []) => Some((a, c, None)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((addr, conns, per_conn)) = parsed else {
        eprintln!("--client needs `echo ADDR CONNS PER_CONN` or `idle ADDR CONNS`");
        return ExitCode::from(2);
    };
    let result = match per_conn {
        Some(per) => echo_client(addr, conns, per),
        None => idle_client(addr, conns),
    };
    match result {
        Ok(bytes) => {
            println!("ok {bytes}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `conns` threads, one connection each, `per_conn` round trips each, all started at `go`.
fn echo_client(addr: SocketAddr, conns: u64, per_conn: u64) -> io::Result<u64> {
    let streams = (0..conns).map(|_| connect(addr)).collect::<io::Result<Vec<_>>>()?;
    let barrier = Arc::new(Barrier::new(conns as usize + 1));
    let threads: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, mut s)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_conn {
                    round_trip(&mut s, c as u64, i)?;
                }
                Ok::<_, io::Error>(per_conn * ECHO_MSG as u64)
            })
        })
        .collect();
    if let Err(e) = wait_for_go() {
        eprintln!("client: {e}");
        std::process::exit(1);
    }
    barrier.wait();
    let mut bytes = 0;
    for t in threads {
        bytes += t.join().map_err(|_| io::Error::other("a client thread panicked"))??;
    }
    Ok(bytes)
}

/// `idle_conns`' client pauses for [`CONNECT_PAUSE`] after every `CONNECT_BURST` connections:
/// a connect whose SYN finds the server's accept queue full (std's listener has a backlog of
/// 128, and on a busy 2-core machine the server may not run for a few milliseconds) is retried
/// by the kernel only after a whole second.
const CONNECT_BURST: u64 = 64;
const CONNECT_PAUSE: Duration = Duration::from_millis(2);

/// `conns` connections from one thread; at `go`, one message on each, then every echo.
fn idle_client(addr: SocketAddr, conns: u64) -> io::Result<u64> {
    let mut streams = Vec::with_capacity(conns as usize);
    for c in 0..conns {
        if c > 0 && c % CONNECT_BURST == 0 {
            std::thread::sleep(CONNECT_PAUSE);
        }
        streams.push(connect(addr).map_err(|e| io::Error::new(e.kind(), format!("connection {c}: {e}")))?);
    }
    wait_for_go()?;
    for (c, s) in streams.iter_mut().enumerate() {
        s.write_all(&message(c as u64, 0))?;
    }
    let mut bytes = 0;
    for (c, s) in streams.iter_mut().enumerate() {
        read_echo(s, &message(c as u64, 0), c as u64, 0)?;
        bytes += ECHO_MSG as u64;
    }
    Ok(bytes)
}
