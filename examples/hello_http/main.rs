//! aiohttp's first server example, on hatchery: a small, correct HTTP/1.1 server.
//!
//! ```python
//! async def handle(request):
//!     name = request.match_info.get('name', "Anonymous")
//!     return web.Response(text="Hello, " + name)
//! app.add_routes([web.get('/', handle), web.get('/{name}', handle)])
//! ```
//!
//! Here `GET /` answers `Hello, Anonymous!` and `GET /{name}` answers `Hello, {name}!` (the
//! name percent-decoded). `HEAD` works too; any other method gets `405 Method Not Allowed`
//! (with `Allow: GET, HEAD`), a path of more than one segment `404 Not Found`, a malformed
//! request a `400 Bad Request` that says what was wrong, and then the connection closes.
//!
//! What it shows:
//! - one task per connection with `serve_tcp`; shared state (the cached `Date` header, the
//!   deadlines) borrowed by every connection from `main`, without `Arc`;
//! - persistent connections: HTTP/1.1 keeps the connection open unless the client sends
//!   `Connection: close`; HTTP/1.0 closes unless it sends `Connection: keep-alive`;
//! - pipelining: all the requests that arrive in one read are answered in one write;
//! - deadlines on one cancel scope per connection, moved as the connection changes phase: an
//!   idle connection closes after `--idle-timeout`, a request must arrive within
//!   `--request-timeout` of its first byte (or the client gets `408 Request Timeout`), and a
//!   client must take its responses within `--write-timeout`;
//! - graceful shutdown on Ctrl-C (exit status 130).
//!
//! The first line on stdout is always `listening on <addr>` (`--addr 127.0.0.1:0` picks a free
//! port, and the line tells which), so scripts and benchmarks can find the server:
//!
//! ```text
//! cargo run --release --example hello_http -- --addr 127.0.0.1:8080
//! curl http://127.0.0.1:8080/            # Hello, Anonymous!
//! curl http://127.0.0.1:8080/World       # Hello, World!
//! wrk -c50 -d10s http://127.0.0.1:8080/
//! ```
//!
//! The protocol lives in `http.rs` as pure functions over buffers (a request parser, a router
//! and a response writer) plus the connection loop; `tests/examples_net.rs` includes that file
//! to unit-test the parser and to run the connection loop on the virtual clock, and runs this
//! binary against `curl` and raw sockets.

use std::net::SocketAddr;
use std::process::ExitCode;

use hatchery::net::{TcpStream, serve_tcp};
use hatchery::signal::ctrl_c_cancels;
use hatchery::{CancelError, Error, nursery};

#[path = "../common/cli.rs"]
mod cli;
mod http;

const USAGE: &str = "\
usage: hello_http [--addr HOST:PORT] [--idle-timeout D] [--request-timeout D] [--write-timeout D]

  --addr HOST:PORT       address to listen on (default 127.0.0.1:8080; port 0 picks a free one)
  --idle-timeout D       close a connection idle for D (default 15s)
  --request-timeout D    answer 408 to a request that takes longer than D to arrive (default 10s)
  --write-timeout D      close a connection whose client does not read its responses for D (default 10s)

Durations are written like 500ms, 10s or 1m.";

fn main() -> ExitCode {
    let mut flags = cli::Flags::from_env(USAGE);
    let addr: SocketAddr = flags.get("addr", SocketAddr::from(([127, 0, 0, 1], 8080)));
    let defaults = http::Config::default();
    let config = http::Config {
        idle_timeout: flags.get("idle-timeout", cli::Dur(defaults.idle_timeout)).0,
        request_timeout: flags.get("request-timeout", cli::Dur(defaults.request_timeout)).0,
        write_timeout: flags.get("write-timeout", cli::Dur(defaults.write_timeout)).0,
    };
    flags.finish();

    let date = http::DateCache::new();
    match hatchery::run(ctrl_c_cancels(serve(addr, &config, &date))) {
        Ok(outcome) => {
            if let Some(signal) = outcome.signal() {
                println!("shutting down (signal {signal})");
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("hello_http: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until cancelled.
async fn serve(addr: SocketAddr, config: &http::Config, date: &http::DateCache) -> Result<(), Error> {
    nursery(async |n| {
        let handler = async |conn: TcpStream| match http::serve_connection(&conn, config, date).await {
            // Shutting down: pass the cancellation on.
            Err(e) if e.cancelled().is_some() => Err(Error::from(e)),
            // A client that vanished (a reset, say) ends its own connection and nothing else.
            _ => Ok(()),
        };
        let bound = n.start(|status| serve_tcp(addr, handler, status)).await?;
        println!("listening on {bound}");
        Ok(())
    })
    .await?;
    Ok(())
}
