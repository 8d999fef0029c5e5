//! aiohttp's concurrent client, the structured way: fetch N URLs at once, each under its own
//! deadline, all under one overall deadline, and print what happened.
//!
//! What it shows:
//! - a nursery of N fetch tasks, with a `CapacityLimiter` keeping at most `--concurrency`
//!   requests in flight;
//! - deadlines that compose: each request runs under `fail_after(--timeout)` (counted as
//!   "timed out" when it fires), and the whole run under `move_on_after(--deadline)`, which
//!   cancels whatever is still running or waiting when it fires (counted as "unfinished");
//! - one task's failure is recorded, not propagated, so it does not cancel its siblings;
//! - `net::connect_tcp` (name resolution off the event loop, happy eyeballs) for the
//!   connections.
//!
//! Without `--url-base` it starts `hello_http`'s server in the same process (the same code:
//! this file includes `hello_http/http.rs`), plus a "black hole" listener that accepts
//! connections and never answers; `--stall K` sends K of the N requests there, so the run shows
//! per-request timeouts as well as successes. With `--url-base http://HOST:PORT` it fetches
//! `HOST:PORT/name-0` to `/name-{N-1}` from a running `hello_http`-like server instead.
//!
//! ```text
//! cargo run --example fetch_all                        # 100 URLs, 2 of them stall
//! cargo run --example fetch_all -- --n 1000 --stall 0 --concurrency 200
//! cargo run --example hello_http -- --addr 127.0.0.1:8080 &
//! cargo run --example fetch_all -- --url-base http://127.0.0.1:8080
//! ```
//!
//! The last line of output is the summary:
//! `100 requests in 1.01s: 98 ok, 2 timed out, 0 failed, 0 unfinished`.

use std::cell::{Cell, RefCell};
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use hatchery::net::{TcpListener, TcpStream, connect_tcp, serve_tcp};
use hatchery::{CancelError, CapacityLimiter, Error, fail_after, move_on_after, now, nursery};

#[path = "common/cli.rs"]
mod cli;
#[path = "hello_http/http.rs"]
mod http;

const USAGE: &str = "\
usage: fetch_all [--n N] [--url-base URL] [--concurrency C] [--timeout D] [--deadline D] [--stall K]

  --n N             how many URLs to fetch (default 100): URL_BASE/name-0 ... /name-(N-1)
  --url-base URL    fetch from this hello_http-like server, http://HOST:PORT[/PREFIX]
                    (default: start one in this process)
  --concurrency C   at most C requests in flight (default 50)
  --timeout D       deadline of each request (default 1s)
  --deadline D      deadline of the whole run (default 10s)
  --stall K         with the in-process server: send K requests to a server that never
                    answers, to see per-request timeouts (default 2)";

/// Where the requests go.
#[derive(Debug, Clone)]
struct Target {
    /// Host name or IP address (without brackets).
    host: String,
    port: u16,
    /// Path prefix, without a trailing slash.
    prefix: String,
}

/// Parses `http://HOST[:PORT][/PREFIX]`.
fn parse_url(url: &str) -> Result<Target, String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = port.map_or(Ok(80), |p| p.parse().map_err(|e| format!("{url:?}: bad port: {e}")))?;
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Target { host: host.to_string(), port, prefix: prefix.trim_end_matches('/').to_string() })
}

/// What happened to the requests.
#[derive(Default)]
struct Tally {
    ok: Cell<usize>,
    timed_out: Cell<usize>,
    failed: Cell<usize>,
    /// The first few failures, for the report.
    failures: RefCell<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.set(self.failed.get() + 1);
        let mut failures = self.failures.borrow_mut();
        if failures.len() < 5 {
            failures.push(what);
        }
    }
}

struct Options {
    count: usize,
    concurrency: usize,
    timeout: Duration,
    deadline: Duration,
    stall: usize,
}

fn main() -> ExitCode {
    let mut flags = cli::Flags::from_env(USAGE);
    let target =
        flags.opt::<String>("url-base").map(|u| parse_url(&u).unwrap_or_else(|e| cli::fail(USAGE, e)));
    let options = Options {
        count: flags.get("n", 100),
        concurrency: flags.get("concurrency", 50),
        timeout: flags.get("timeout", cli::Dur(Duration::from_secs(1))).0,
        deadline: flags.get("deadline", cli::Dur(Duration::from_secs(10))).0,
        stall: flags.get("stall", 2),
    };
    flags.finish();
    if options.concurrency == 0 {
        cli::fail(USAGE, "--concurrency must be at least 1");
    }

    match hatchery::run(run(target, &options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fetch_all: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(target: Option<Target>, options: &Options) -> Result<(), Error> {
    let config = http::Config::default();
    let date = http::DateCache::new();
    nursery(async |n| {
        let (target, black_hole) = match target {
            Some(t) => (t, None),
            None => {
                let handler =
                    async |conn: TcpStream| match http::serve_connection(&conn, &config, &date).await {
                        Err(e) if e.cancelled().is_some() => Err(Error::from(e)),
                        _ => Ok(()),
                    };
                let addr = n.start(|status| serve_tcp(([127, 0, 0, 1], 0), handler, status)).await?;
                // Connections to this listener complete (the kernel queues them) and are never
                // answered.
                let black_hole = TcpListener::bind(([127, 0, 0, 1], 0))?;
                let stall_port = black_hole.local_addr()?.port();
                println!("serving on {addr}; requests that stall go to port {stall_port}");
                let t = Target { host: addr.ip().to_string(), port: addr.port(), prefix: String::new() };
                (t, Some((black_hole, stall_port)))
            }
        };
        let stall_port = black_hole.as_ref().map(|(_, port)| *port);
        fetch_all(&target, stall_port, options).await?;
        n.cancel_scope().cancel(); // stop the in-process servers, if any
        Ok(())
    })
    .await?;
    Ok(())
}

/// Fetches every URL and prints the summary.
async fn fetch_all(target: &Target, stall_port: Option<u16>, options: &Options) -> Result<(), Error> {
    let tally = Tally::default();
    let limiter = CapacityLimiter::new(options.concurrency);
    let start = now();
    let count = options.count;
    // `K` of the `N` requests, spread evenly, go to the black hole (if there is one).
    let port_of = |i: usize| match stall_port {
        Some(port) if (i + 1) * options.stall / count != i * options.stall / count => port,
        _ => target.port,
    };
    let finished = move_on_after(
        options.deadline,
        nursery(async |n| {
            for i in 0..count {
                let (tally, limiter) = (&tally, &limiter);
                let port = port_of(i);
                n.start_soon(async move {
                    let _token = limiter.acquire().await?;
                    let name = format!("name-{i}");
                    match fail_after(options.timeout, fetch(&target.host, port, &target.prefix, &name)).await
                    {
                        Ok((200, body)) if body == format!("Hello, {name}!") => {
                            tally.ok.set(tally.ok.get() + 1)
                        }
                        Ok((status, body)) => tally.fail(format!("{name}: status {status}, body {body:?}")),
                        Err(Error::TooSlow(_)) => tally.timed_out.set(tally.timed_out.get() + 1),
                        // The overall deadline: pass it on to the scope that owns it.
                        Err(e) if e.cancelled().is_some() => return Err(e),
                        Err(e) => tally.fail(format!("{name}: {e}")),
                    }
                    Ok::<_, Error>(())
                });
            }
            Ok(())
        }),
    )
    .await?
    .is_some();
    let elapsed = now() - start;

    for failure in tally.failures.borrow().iter() {
        println!("failed: {failure}");
    }
    if !finished {
        println!("the overall deadline ({:?}) passed", options.deadline);
    }
    let (ok, timed_out, failed) = (tally.ok.get(), tally.timed_out.get(), tally.failed.get());
    let unfinished = count - ok - timed_out - failed;
    let secs = elapsed.as_secs_f64();
    println!(
        "{count} requests in {secs:.2}s: {ok} ok, {timed_out} timed out, {failed} failed, {unfinished} unfinished"
    );
    Ok(())
}

/// One `GET`: the status code and the body. The response is read up to its `Content-Length`
/// (the request asks the server to close the connection afterwards, so the connection is not
/// reused).
async fn fetch(host: &str, port: u16, prefix: &str, name: &str) -> Result<(u16, String), Error> {
    let conn = connect_tcp(host, port).await?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let request = format!(
        "GET {prefix}/{name} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: fetch_all\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;

    let mut response = Vec::with_capacity(512);
    let mut buf = [0; 4096];
    let (head_len, status, body_len) = loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(bad_response("the connection closed before the response head ended"));
        }
        response.extend_from_slice(&buf[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, body_len) = parse_head(&response[..end])?;
            break (end + 4, status, body_len);
        }
        if response.len() > http::MAX_HEAD {
            return Err(bad_response("response head too large"));
        }
    };
    while response.len() < head_len + body_len {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(bad_response("the connection closed before the body ended"));
        }
        response.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&response[head_len..head_len + body_len]).into_owned();
    Ok((status, body))
}

/// The status code and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> Result<(u16, usize), Error> {
    let head = std::str::from_utf8(head).map_err(|_| bad_response("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad_response("malformed status line"))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or_else(|| bad_response("no Content-Length"))?;
    Ok((status, length))
}

fn bad_response(what: &str) -> Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string()).into()
}
