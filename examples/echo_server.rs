//! An echo server: every byte a client sends comes back to it, with one task per connection.
//!
//! What it shows:
//! - `serve_tcp` started with `Nursery::start`: `start` returns once the listener is bound, with
//!   its address (so `--addr 127.0.0.1:0` picks a free port and the program can print it);
//! - a handler per connection that borrows shared state from `main`'s scope (the counters: a
//!   `Cell`, no `Arc`, no `Mutex`);
//! - handler errors that belong to one connection (a client resetting its connection) are
//!   reported and end that connection only; a cancellation is passed on, so shutting down stays
//!   an orderly cancellation;
//! - graceful shutdown on Ctrl-C (`signal::ctrl_c_cancels`): the first SIGINT or SIGTERM cancels
//!   the server, every connection task ends and its socket is closed; the exit status is 130
//!   (143 for SIGTERM).
//!
//! The first line on stdout is always `listening on <addr>`, for scripts and tests.
//!
//! ```text
//! cargo run --example echo_server -- --addr 127.0.0.1:7000
//! # elsewhere:
//! nc 127.0.0.1 7000
//! python3 -c 'import socket; s = socket.create_connection(("127.0.0.1", 7000)); s.sendall(b"hi"); print(s.recv(2))'
//! ```
//!
//! `tests/examples_net.rs` runs it and talks to it with a Python socket client.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use hatchery::net::{TcpStream, serve_tcp};
use hatchery::signal::ctrl_c_cancels;
use hatchery::{CancelError, Error, nursery};

#[path = "common/cli.rs"]
mod cli;

const USAGE: &str = "\
usage: echo_server [--addr HOST:PORT] [--quiet]

  --addr HOST:PORT   address to listen on (default 127.0.0.1:7000; port 0 picks a free one)
  --quiet            do not log each connection";

/// Counters shared by every connection's task.
#[derive(Default)]
struct Stats {
    open: Cell<u64>,
    served: Cell<u64>,
    bytes: Cell<u64>,
}

fn main() -> ExitCode {
    let mut flags = cli::Flags::from_env(USAGE);
    let addr: SocketAddr = flags.get("addr", SocketAddr::from(([127, 0, 0, 1], 7000)));
    let quiet = flags.switch("quiet");
    flags.finish();

    let stats = Stats::default();
    let outcome = hatchery::run(ctrl_c_cancels(serve(addr, quiet, &stats)));
    let summary =
        format!("served {} connection(s), echoed {} byte(s)", stats.served.get(), stats.bytes.get());
    match outcome {
        Ok(outcome) => {
            if let Some(signal) = outcome.signal() {
                println!("shutting down (signal {signal}): {summary}");
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until cancelled (or until the listener fails).
async fn serve(addr: SocketAddr, quiet: bool, stats: &Stats) -> Result<(), Error> {
    nursery(async |n| {
        let handler = async |conn: TcpStream| handle(conn, quiet, stats).await;
        let bound = n.start(|status| serve_tcp(addr, handler, status)).await?;
        println!("listening on {bound}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// One connection: echo until the client stops sending, then close.
async fn handle(conn: TcpStream, quiet: bool, stats: &Stats) -> Result<(), Error> {
    let peer = conn.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    stats.open.set(stats.open.get() + 1);
    if !quiet {
        println!("{peer}: connected ({} open)", stats.open.get());
    }
    let result = echo(&conn, stats).await;
    stats.open.set(stats.open.get() - 1);
    stats.served.set(stats.served.get() + 1);
    match result {
        Ok(bytes) if !quiet => println!("{peer}: closed after {bytes} byte(s)"),
        Ok(_) => {}
        // The server is shutting down: let the cancellation through.
        Err(e) if e.cancelled().is_some() => return Err(e.into()),
        // Only this connection failed (a reset, say): report it and carry on serving.
        Err(e) => eprintln!("{peer}: {e}"),
    }
    Ok(())
}

/// Copies everything the client sends back to it; the byte count at end of stream.
async fn echo(conn: &TcpStream, stats: &Stats) -> io::Result<u64> {
    let mut buf = [0; 16 * 1024];
    let mut total = 0;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        conn.write_all(&buf[..n]).await?;
        total += n as u64;
        stats.bytes.set(stats.bytes.get() + n as u64);
    }
}
