//! A fault-injecting TCP proxy in the spirit of Mozilla's Vaurien: put it between a client and
//! a server to see how both cope with a network that is slow, choppy, or breaks.
//!
//! ```text
//! cargo run --example echo_server -- --addr 127.0.0.1:7000 &
//! cargo run --example chaos_proxy -- --listen 127.0.0.1:8888 --upstream 127.0.0.1:7000 \
//!     --seed 42 --delay 20ms --slice 16 --bandwidth 4096 --reset 10 --hang 10 --close 10
//! nc 127.0.0.1 8888
//! ```
//!
//! Every connection to `--listen` is forwarded to `--upstream`, both ways, through:
//!
//! - `--delay D`: each piece waits a random time in `[0, D]`;
//! - `--slice N`: data goes out in pieces of a random size in `[1, N]`, one write each;
//! - `--bandwidth B`: at most `B` bytes per second per direction;
//! - `--reset P`, `--hang P`, `--close P`: that percentage of connections gets the
//!   destructive fault, once the upstream has sent the client a random number of bytes in
//!   `[0, --fault-bytes]` (default 4096): an abortive reset, a hang (nothing is forwarded
//!   any more; the connection is held until the client's side fails or the proxy stops), or a
//!   clean close; `--strike-delay D` makes the fault strike D after those bytes went out.
//!
//! It is **reproducible**: the fault of connection number `i` (in accept order) and the
//! shaping draws of each direction derive from `--seed` and `i` alone (xorshift64*), so a run
//! that exposed a bug can be replayed. The first stdout line is `listening on <addr>`; then one
//! line per connection and per fault (unless `--quiet`), and the totals on Ctrl-C.
//!
//! **Also a test tool.** The proxy is `hatchery::testing::chaos::ChaosProxy`; this file is only
//! its command line. A test runs the same proxy in-process, between its clients and the server
//! under test, on the virtual clock, so delays cost no real time (`tests/chaos.rs` does).

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use hatchery::nursery;
use hatchery::signal::ctrl_c_cancels;
use hatchery::testing::chaos::{ChaosProxy, Config};

#[path = "../common/cli.rs"]
mod cli;

const USAGE: &str = "\
usage: chaos_proxy --upstream HOST:PORT [--listen HOST:PORT] [--seed N]
                   [--delay D] [--slice N] [--bandwidth B]
                   [--reset P] [--hang P] [--close P] [--fault-bytes N] [--strike-delay D] [--quiet]

  --upstream HOST:PORT  where to forward connections (a host name or an IP address)
  --listen HOST:PORT    address to listen on (default 127.0.0.1:8888; port 0 picks a free one)
  --seed N              seed of every random choice (default 0)
  --delay D             each piece waits a random time in [0, D] (default 0; e.g. 20ms)
  --slice N             send data in pieces of 1 to N bytes (default 0: as read)
  --bandwidth B         at most B bytes per second per direction (default 0: unlimited)
  --reset P             P percent of connections are reset (default 0)
  --hang P              P percent of connections hang (default 0)
  --close P             P percent of connections are closed early (default 0)
  --fault-bytes N       destructive faults strike after 0 to N bytes to the client (default 4096)
  --strike-delay D      ...and D after those bytes went out (default 0)
  --quiet               no line per connection";

fn main() -> ExitCode {
    let mut flags = cli::Flags::from_env(USAGE);
    let upstream: String =
        flags.opt("upstream").unwrap_or_else(|| cli::fail(USAGE, "--upstream is required"));
    let listen: SocketAddr = flags.get("listen", SocketAddr::from(([127, 0, 0, 1], 8888)));
    let config = Config::new()
        .seed(flags.get("seed", 0))
        .delay(flags.get("delay", cli::Dur(std::time::Duration::ZERO)).0)
        .slice(flags.get("slice", 0))
        .bandwidth(flags.get("bandwidth", 0))
        .reset(flags.get("reset", 0))
        .hang(flags.get("hang", 0))
        .close(flags.get("close", 0))
        .fault_within(flags.get("fault-bytes", 4096))
        .strike_delay(flags.get("strike-delay", cli::Dur(std::time::Duration::ZERO)).0);
    let verbose = !flags.switch("quiet");
    flags.finish();
    let (host, port) = match upstream.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) => (host.trim_start_matches('[').trim_end_matches(']').to_string(), port),
            Err(e) => cli::fail(USAGE, format!("--upstream {upstream:?}: bad port: {e}")),
        },
        None => cli::fail(USAGE, format!("--upstream {upstream:?}: expected HOST:PORT")),
    };

    let summary = format!("{config:?}");
    let proxy = match ChaosProxy::for_host(host.clone(), port, config) {
        Ok(proxy) if verbose => proxy.on_event(|event| println!("{event}")),
        Ok(proxy) => proxy,
        Err(e) => cli::fail(USAGE, e),
    };
    let outcome = hatchery::run(ctrl_c_cancels(async {
        nursery(async |n| {
            let bound = n.start(|status| proxy.serve(listen, status)).await?;
            println!("listening on {bound}");
            println!("forwarding to {host}:{port} with {summary}");
            Ok::<_, io::Error>(())
        })
        .await?;
        Ok::<_, io::Error>(())
    }));
    println!("{}", proxy.statistics());
    match outcome {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("chaos_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
