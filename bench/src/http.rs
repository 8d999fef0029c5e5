//! `http_wrk`: `wrk -t1 -c50 -d{n}s --latency http://ADDR/alice` against a minimal HTTP/1.1
//! keep-alive responder (`GET /` and `GET /{name}` answer `Hello, {name}!`), each in its own
//! process: hatchery's `examples/hello_http` (which also keeps per-connection deadlines and
//! rejects malformed requests properly), and the same responder written here on each peer
//! (hand-written parsing, no hyper), and on hatchery too (`--hello-http bench`, or when the
//! example cannot be built). Every server takes `--addr 127.0.0.1:0` and prints
//! `listening on ADDR` as its first line of output. The responders here answer with the same
//! bytes as the example (`Content-Type: text/plain; charset=utf-8`, `Content-Length`, a `Date`
//! formatted once per second), so that the requests and responses on the wire are identical.
//!
//! Before `wrk` runs, one keep-alive connection checks that the server answers two requests
//! correctly. The figures are `wrk`'s requests per second and latency percentiles, and the
//! server process's CPU time (user + sys, from `/proc/PID/stat`) per request.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{HTTP_BODY, HTTP_PATH, Runtime, Sample, WRK_CONNS, Workload};
use crate::echo::spawn_tied;

/// The read buffer of a connection; a request head must fit.
const HTTP_BUF: usize = 4096;

/// One connection's parsing state, shared by every runtime's responder: the runtime reads into
/// [`spare`](HttpConn::spare), calls [`received`](HttpConn::received), and writes out
/// [`out`](HttpConn::out) if it is not empty.
pub struct HttpConn {
    buf: Vec<u8>,
    filled: usize,
    /// Responses to write, in order.
    pub out: Vec<u8>,
}

impl HttpConn {
    pub fn new() -> HttpConn {
        HttpConn { buf: vec![0; HTTP_BUF], filled: 0, out: Vec::with_capacity(256) }
    }

    /// Where the next read goes.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// `n` bytes were read into [`spare`](HttpConn::spare): answers every complete request
    /// (into `out`). Returns whether to close the connection once `out` is written.
    ///
    /// # Errors
    ///
    /// A malformed request, or a request head bigger than the buffer.
    pub fn received(&mut self, n: usize) -> io::Result<bool> {
        self.filled += n;
        let mut start = 0;
        let mut close = false;
        let date = date();
        while let Some(end) = find(&self.buf[start..self.filled], b"\r\n\r\n") {
            let head = &self.buf[start..start + end];
            start += end + 4;
            close = respond(head, &mut self.out, &date)?;
            if close {
                break;
            }
        }
        self.buf.copy_within(start..self.filled, 0);
        self.filled -= start;
        if self.filled == self.buf.len() {
            return Err(io::Error::other("request head too large"));
        }
        Ok(close)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

thread_local! {
    /// The `Date` header's value and the second it was formatted for.
    static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [b' '; 29])) };
}

/// The current date as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once per
/// second.
fn date() -> [u8; 29] {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let (second, text) = d.get();
        if second == now {
            return text;
        }
        let text = imf_fixdate(now);
        d.set((now, text));
        text
    })
}

/// Formats seconds since the Unix epoch (RFC 9110 section 5.6.7).
fn imf_fixdate(unix_secs: u64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    // Howard Hinnant's `civil_from_days`.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [b' '; 29];
    let _ = write!(
        &mut out[..],
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[((days + 4) % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    out
}

/// Answers one request head (without its blank line); returns whether the client asked to
/// close (`Connection: close`, or HTTP/1.0).
fn respond(head: &[u8], out: &mut Vec<u8>, date: &[u8; 29]) -> io::Result<bool> {
    let bad = || io::Error::other("malformed request");
    let head = std::str::from_utf8(head).map_err(|_| bad())?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().ok_or_else(bad)?.split(' ');
    let (method, target, version) =
        (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let close = version == "HTTP/1.0"
        || lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            })
        });
    if method != "GET" {
        out.extend_from_slice(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return Ok(close);
    }
    let name = match target.trim_start_matches('/') {
        "" => "Anonymous",
        name => name,
    };
    let body_len = "Hello, !".len() + name.len();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_len}\r\nDate: "
    )?;
    out.extend_from_slice(date);
    out.extend_from_slice(if close { b"\r\nConnection: close\r\n\r\n" } else { b"\r\n\r\n" });
    write!(out, "Hello, {name}!")?;
    Ok(close)
}

/// `--serve-http RUNTIME --addr ADDR`: one of this crate's responders, in its own process,
/// serving until killed.
pub fn serve_main(args: &[String]) -> ExitCode {
    let (rt, addr) = match args {
        [rt, flag, addr] if flag == "--addr" => (Runtime::from_name(rt), addr.parse::<SocketAddr>().ok()),
        _ => (None, None),
    };
    let (Some(rt), Some(addr)) = (rt, addr) else {
        eprintln!("--serve-http needs RUNTIME --addr ADDR");
        return ExitCode::from(2);
    };
    let listening = |a: SocketAddr| {
        println!("listening on {a}");
        let _ = io::stdout().flush();
    };
    let r = match rt {
        Runtime::Hatchery => crate::hatchery_rt::http_server(addr, listening),
        Runtime::Tokio | Runtime::TokioLocal => {
            crate::tokio_rt::http_server(rt == Runtime::TokioLocal, addr, listening)
        }
        Runtime::Smol => crate::smol_rt::http_server(addr, listening),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} http server: {e}", rt.label());
            ExitCode::FAILURE
        }
    }
}

/// Whether `wrk` can be started.
pub fn wrk_installed() -> bool {
    Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Builds `examples/hello_http` (release) into the target directory of this executable and
/// returns its path, or why it cannot.
pub fn build_hello_http() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // This executable is TARGET/release/hatchery-bench.
    let release = exe.parent().ok_or("no target directory")?;
    let target = release.parent().ok_or("no target directory")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--example", "hello_http", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().find(|l| l.starts_with("error")).unwrap_or("").trim().to_string();
        return Err(format!("`cargo build --release --example hello_http` failed: {why}"));
    }
    let bin = release.join("examples/hello_http");
    if bin.exists() { Ok(bin) } else { Err(format!("{} is missing after the build", bin.display())) }
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server (`hello_http`: the example's binary for hatchery, if any) and returns it
/// with the address from its first line.
fn start_server(rt: Runtime, hello_http: Option<&Path>) -> io::Result<(Server, SocketAddr)> {
    let mut cmd = match (rt, hello_http) {
        (Runtime::Hatchery, Some(bin)) => Command::new(bin),
        _ => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["--serve-http", rt.name()]);
            c
        }
    };
    cmd.args(["--addr", "127.0.0.1:0"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = spawn_tied(&mut cmd)?;
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let server = Server(child);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("expected `listening on ADDR`, got {line:?}")))?;
    // Keep draining its output, so that a server that logs never blocks on a full pipe.
    std::thread::spawn(move || io::copy(&mut out, &mut io::sink()));
    Ok((server, addr))
}

/// Sends two requests on one connection and checks both answers.
fn check_responses(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    for _ in 0..2 {
        write!(s, "GET {HTTP_PATH} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte)?;
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        if !head.starts_with("HTTP/1.1 200") || body != HTTP_BODY.as_bytes() {
            return Err(io::Error::other(format!(
                "GET {HTTP_PATH}: expected 200 and {HTTP_BODY:?}, got {head:?} {:?}",
                String::from_utf8_lossy(&body)
            )));
        }
    }
    Ok(())
}

/// CPU time (user + sys, seconds) of process `pid` so far.
fn cpu_of(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks =
        |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| io::Error::other("bad stat"));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// A duration as `wrk` prints it (`312.00us`, `1.23ms`, `1.02s`), in microseconds.
fn wrk_micros(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else {
        (v.strip_suffix('s')?, 1e6)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// One `http_wrk` measurement; `NaN`s (and the reason on stderr) if the server misbehaves.
pub fn http_wrk(rt: Runtime, secs: u64, hello_http: Option<&Path>) -> Sample {
    match try_http_wrk(rt, secs, hello_http) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("http_wrk on {}: {e}", rt.label());
            Sample::of(vec![f64::NAN; Workload::HttpWrk.metrics().len()])
        }
    }
}

fn try_http_wrk(rt: Runtime, secs: u64, hello_http: Option<&Path>) -> io::Result<Sample> {
    let (server, addr) = start_server(rt, hello_http)?;
    check_responses(addr)?;
    let pid = server.0.id();
    let cpu0 = cpu_of(pid)?;
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{WRK_CONNS}"), &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://{addr}{HTTP_PATH}"))
        .stdin(Stdio::null())
        .output()?;
    let cpu = cpu_of(pid)? - cpu0;
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(io::Error::other(format!("wrk failed ({}): {text}", out.status)));
    }
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
        return Err(io::Error::other(format!("wrk saw errors: {}", l.trim())));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.split_whitespace().next().unwrap_or("")))
    };
    let bad = |what: &str| io::Error::other(format!("no {what} in wrk's output: {text}"));
    let rate: f64 = field("Requests/sec:").and_then(|v| v.parse().ok()).ok_or_else(|| bad("Requests/sec"))?;
    let requests: f64 = text
        .lines()
        .find_map(|l| l.split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .ok_or_else(|| bad("request count"))?;
    let p50 = field("50%").and_then(wrk_micros).ok_or_else(|| bad("50% latency"))?;
    let p99 = field("99%").and_then(wrk_micros).ok_or_else(|| bad("99% latency"))?;
    Ok(Sample::of(vec![rate, p50, p99, cpu * 1e6 / requests]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_format() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn pipelined_requests_and_close() {
        let mut c = HttpConn::new();
        let reqs = b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /x";
        c.spare()[..reqs.len()].copy_from_slice(reqs);
        assert!(c.received(reqs.len()).unwrap());
        let out = String::from_utf8(c.out.clone()).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2);
        assert!(out.contains("Content-Length: 13\r\n"));
        assert!(out.contains("\r\n\r\nHello, alice!HTTP/1.1"));
        assert!(out.ends_with("Connection: close\r\n\r\nHello, Anonymous!"));
    }
}
