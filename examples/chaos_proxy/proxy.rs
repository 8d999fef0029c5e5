//! The engine of `chaos_proxy`: a TCP proxy that forwards both directions of every connection
//! through fault injection. `main.rs` wraps it in a command line; `tests/chaos.rs` includes this
//! file (`#[path = "../examples/chaos_proxy/proxy.rs"] mod proxy;`) and runs it in-process, on
//! the virtual clock, between its clients and an echo server.
//!
//! Faults, in the spirit of Mozilla's Vaurien:
//!
//! - **shaping**, on every connection and both directions: `delay` (each piece waits a random
//!   time in `[0, delay]` before it is sent), `slice` (each chunk read is sent as pieces of a
//!   random size in `[1, slice]`, each its own write, so the peer's reads see small fragments),
//!   `bandwidth` (at most that many bytes per second per direction, paced piece by piece);
//! - **one destructive fault** on a chosen share of connections, after the upstream has sent
//!   the client `after` bytes (drawn in `[0, fault_bytes]`): `reset` (the client's connection is
//!   aborted with an RST), `hang` (nothing more is forwarded either way; the proxy holds both
//!   connections open, reading and discarding what the client sends, until the client's
//!   connection fails or the proxy stops), `close` (the client gets a clean end of stream, the
//!   upstream connection closes). With `strike_delay`, the fault strikes that long after its
//!   byte count was reached, so that the client sees the last bytes and the fault separately.
//!
//! **Reproducible.** Everything random comes from a xorshift64* generator. Each connection's
//! plan (its fault, the byte count, and the seeds of its two directions' generators) is a pure
//! function of the proxy's seed and the connection's index, in accept order: see
//! [`Config::plan`]. With the same seed, connection number `i` always gets the same fault after
//! the same number of bytes; the shaping draws are reproducible too, though where the network
//! splits the data into reads is not.
//!
//! The proxy never corrupts, reorders, duplicates or drops bytes: what reaches a peer is always
//! a prefix of what was sent to it (`tests/chaos.rs` checks exactly that).

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use hatchery::net::{Listen, TcpStream, connect_tcp, serve_tcp};
use hatchery::{
    CancelError, Instant, TaskStatus, move_on_after, now, nursery, sleep, sleep_forever, sleep_until,
};

/// How long a connection closed by the `close` fault keeps reading (and discarding) what the
/// client still sends, so that the client sees a clean end of stream rather than a reset.
pub(crate) const LINGER: Duration = Duration::from_secs(5);
/// The size of each direction's read buffer.
const CHUNK: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Randomness

/// SplitMix64: turns any seed (0, 1, 2, ...) into well-mixed bits.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64*: small, fast, and good enough to choose faults and sizes (not for secrets).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and plans

/// A destructive fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Abort the client's connection (it sees "connection reset").
    Reset,
    /// Stop forwarding and hold the connection open.
    Hang,
    /// Close the client's connection cleanly (it sees end of stream).
    Close,
}

/// A destructive fault and when it strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) kind: FaultKind,
    /// It strikes once the upstream has sent the client this many bytes (0: at once, before
    /// the upstream is even connected).
    pub(crate) after: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FaultKind::Reset => "reset",
            FaultKind::Hang => "hang",
            FaultKind::Close => "close",
        };
        write!(f, "{kind} after {} byte(s)", self.after)
    }
}

/// What the proxy does to connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    /// The seed of every random choice.
    pub(crate) seed: u64,
    /// Each piece waits a random time in `[0, delay]` before it is sent.
    pub(crate) delay: Duration,
    /// Pieces of a random size in `[1, slice]` (0: chunks are sent as read).
    pub(crate) slice: usize,
    /// Bytes per second per direction (0: unlimited).
    pub(crate) bandwidth: u64,
    /// Percent of connections that get a `reset`.
    pub(crate) reset_percent: u32,
    /// Percent of connections that get a `hang`.
    pub(crate) hang_percent: u32,
    /// Percent of connections that get a `close`.
    pub(crate) close_percent: u32,
    /// A destructive fault strikes after a random number of bytes in `[0, fault_bytes]`.
    pub(crate) fault_bytes: u64,
    /// ...and this long after that many bytes went out (0: at once, so the client may well
    /// receive the last bytes and the reset or end of stream together).
    pub(crate) strike_delay: Duration,
    /// Print a line per connection.
    pub(crate) verbose: bool,
}

/// What happens to one connection: a pure function of the seed and the connection's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The connection's index, in accept order from 0.
    pub(crate) index: u64,
    /// Its destructive fault, if it gets one.
    pub(crate) fault: Option<Fault>,
    /// The seed of the client-to-upstream direction's shaping draws.
    pub(crate) up_seed: u64,
    /// The seed of the upstream-to-client direction's shaping draws.
    pub(crate) down_seed: u64,
}

impl Config {
    /// Checks the percentages.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let total =
            u64::from(self.reset_percent) + u64::from(self.hang_percent) + u64::from(self.close_percent);
        if total > 100 {
            return Err(format!("the fault percentages add up to {total}, more than 100"));
        }
        Ok(())
    }

    /// The plan of connection number `index`.
    pub(crate) fn plan(&self, index: u64) -> Plan {
        let mut rng = Rng::new(self.seed ^ splitmix64(index));
        let roll = rng.below(100) as u32;
        let kind = if roll < self.reset_percent {
            Some(FaultKind::Reset)
        } else if roll < self.reset_percent + self.hang_percent {
            Some(FaultKind::Hang)
        } else if roll < self.reset_percent + self.hang_percent + self.close_percent {
            Some(FaultKind::Close)
        } else {
            None
        };
        let after = rng.below(self.fault_bytes.saturating_add(1));
        Plan {
            index,
            fault: kind.map(|kind| Fault { kind, after }),
            up_seed: rng.next_u64(),
            down_seed: rng.next_u64(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Counters over the proxy's lifetime.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Connections accepted.
    pub(crate) connections: Cell<u64>,
    /// Connections being handled now.
    pub(crate) active: Cell<u64>,
    /// Bytes forwarded from clients to the upstream.
    pub(crate) bytes_up: Cell<u64>,
    /// Bytes forwarded from the upstream to clients.
    pub(crate) bytes_down: Cell<u64>,
    /// `reset` faults applied.
    pub(crate) resets: Cell<u64>,
    /// `hang` faults applied.
    pub(crate) hangs: Cell<u64>,
    /// `close` faults applied.
    pub(crate) closes: Cell<u64>,
    /// Connections whose upstream could not be reached.
    pub(crate) upstream_failures: Cell<u64>,
    /// Connections that ended with an error from either peer (a reset, say).
    pub(crate) errors: Cell<u64>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connection(s) ({} active), {} byte(s) up, {} down; faults: {} reset, {} hang, {} close; \
             {} upstream failure(s), {} connection error(s)",
            self.connections.get(),
            self.active.get(),
            self.bytes_up.get(),
            self.bytes_down.get(),
            self.resets.get(),
            self.hangs.get(),
            self.closes.get(),
            self.upstream_failures.get(),
            self.errors.get()
        )
    }
}

/// Counts a connection as active while it lives.
struct Active<'a>(&'a Cell<u64>);

impl<'a> Active<'a> {
    fn enter(c: &'a Cell<u64>) -> Active<'a> {
        add(c, 1);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// A proxy to one upstream. Shared by every connection task (borrowed, not `Arc`ed).
#[derive(Debug)]
pub(crate) struct Proxy {
    config: Config,
    upstream_host: String,
    upstream_port: u16,
    next_index: Cell<u64>,
    /// The counters.
    pub(crate) stats: Stats,
    /// Every connection's peer address and plan, if recording (tests use it to know which
    /// fault each of their connections got).
    record: Option<RefCell<Vec<(SocketAddr, Plan)>>>,
}

impl Proxy {
    /// A proxy to `upstream_host:upstream_port` (a host name or an IP address; names are
    /// resolved for each connection).
    pub(crate) fn new(config: Config, upstream_host: &str, upstream_port: u16) -> Proxy {
        Proxy {
            config,
            upstream_host: upstream_host.to_string(),
            upstream_port,
            next_index: Cell::new(0),
            stats: Stats::default(),
            record: None,
        }
    }

    /// Records every connection's client address and plan (see [`Proxy::plans`]).
    #[allow(dead_code)] // used by tests/chaos.rs
    pub(crate) fn recording(mut self) -> Proxy {
        self.record = Some(RefCell::new(Vec::new()));
        self
    }

    /// The recorded `(client address, plan)` pairs, in accept order.
    #[allow(dead_code)] // used by tests/chaos.rs
    pub(crate) fn plans(&self) -> Vec<(SocketAddr, Plan)> {
        self.record.as_ref().map(|r| r.borrow().clone()).unwrap_or_default()
    }

    /// Listens on `listen` and proxies every connection, each in a task of its own, until
    /// cancelled; reports the bound address through `status` (use it with `Nursery::start`).
    ///
    /// # Errors
    ///
    /// Binding and accept errors; [`Cancelled`](hatchery::Cancelled) when stopped. Problems
    /// of single connections are counted in [`Proxy::stats`], not returned.
    pub(crate) async fn serve(
        &self,
        listen: impl Into<Listen>,
        status: TaskStatus<SocketAddr>,
    ) -> io::Result<Infallible> {
        let handler = async |client: TcpStream| match self.handle(client).await {
            Err(e) if e.cancelled().is_some() => Err(e),
            Ok(()) => Ok(()),
            // A failure `handle` did not count itself (the peer's address, a fault's own
            // shutdown): counted and logged here, and only this connection ends.
            Err(e) => {
                add(&self.stats.errors, 1);
                if self.config.verbose {
                    println!("connection error: {e}");
                }
                Ok(())
            }
        };
        serve_tcp(listen, handler, status).await
    }

    /// Proxies one connection according to its plan.
    ///
    /// # Errors
    ///
    /// [`Cancelled`](hatchery::Cancelled) if the proxy is stopping; the connection's own
    /// failures are counted and logged, and end in `Ok`.
    pub(crate) async fn handle(&self, client: TcpStream) -> io::Result<()> {
        let index = self.next_index.replace(self.next_index.get() + 1);
        let plan = self.config.plan(index);
        let peer = client.peer_addr()?;
        if let Some(record) = &self.record {
            record.borrow_mut().push((peer, plan));
        }
        add(&self.stats.connections, 1);
        let _active = Active::enter(&self.stats.active);
        if self.config.verbose {
            match plan.fault {
                Some(fault) => println!("#{index} {peer}: {fault}"),
                None => println!("#{index} {peer}: no fault"),
            }
        }

        if let Some(fault) = plan.fault.filter(|f| f.after == 0) {
            return self.apply(index, fault, &client, None).await;
        }
        let upstream = match connect_tcp(&self.upstream_host, self.upstream_port).await {
            Ok(s) => s,
            Err(e) if e.cancelled().is_some() => return Err(e),
            Err(e) => {
                add(&self.stats.upstream_failures, 1);
                if self.config.verbose {
                    println!("#{index}: upstream {}:{}: {e}", self.upstream_host, self.upstream_port);
                }
                return Ok(()); // dropping the client's connection closes it
            }
        };

        let (up_bytes, down_bytes) = (Cell::new(0), Cell::new(0));
        let mut up = Shaper::new(&self.config, plan.up_seed);
        let mut down = Shaper::new(&self.config, plan.down_seed);
        let budget = plan.fault.map(|f| f.after);
        let forwarded = nursery(async |n| {
            n.start_soon(pump(&client, &upstream, &mut up, None, &up_bytes));
            let end = pump(&upstream, &client, &mut down, budget, &down_bytes).await?;
            if end == End::Budget {
                n.cancel_scope().cancel(); // stop the other direction too
            }
            Ok(end)
        })
        .await;
        add(&self.stats.bytes_up, up_bytes.get());
        add(&self.stats.bytes_down, down_bytes.get());
        match forwarded.map_err(io::Error::from) {
            Ok(Some(End::Budget)) => {
                let fault = plan.fault.expect("a budget comes from a fault");
                self.apply(index, fault, &client, Some(upstream)).await
            }
            Ok(_) => {
                if self.config.verbose {
                    println!("#{index}: done, {} byte(s) up, {} down", up_bytes.get(), down_bytes.get());
                }
                Ok(())
            }
            Err(e) if e.cancelled().is_some() => Err(e),
            Err(e) => {
                // One side failed (a reset, say): abort the other, so each peer learns of it.
                add(&self.stats.errors, 1);
                client.close_with_reset();
                upstream.close_with_reset();
                if self.config.verbose {
                    println!("#{index}: {e}");
                }
                Ok(())
            }
        }
    }

    /// Strikes with a destructive fault. `upstream` is the upstream connection, if it was
    /// made: `reset` and `close` close it, `hang` holds it.
    async fn apply(
        &self,
        index: u64,
        fault: Fault,
        client: &TcpStream,
        upstream: Option<TcpStream>,
    ) -> io::Result<()> {
        if !self.config.strike_delay.is_zero() {
            sleep(self.config.strike_delay).await?;
        }
        if self.config.verbose {
            println!("#{index}: {fault}: striking");
        }
        match fault.kind {
            FaultKind::Reset => {
                add(&self.stats.resets, 1);
                drop(upstream);
                client.close_with_reset(); // the RST goes out when the caller drops the stream
                Ok(())
            }
            FaultKind::Close => {
                add(&self.stats.closes, 1);
                drop(upstream);
                client.shutdown(Shutdown::Write).await?;
                // Read what the client still sends, so that closing does not reset the
                // connection (and destroy the end of stream the client has not read yet).
                let mut buf = [0; 4096];
                move_on_after(LINGER, async {
                    while client.read(&mut buf).await? > 0 {}
                    Ok::<_, io::Error>(())
                })
                .await?;
                Ok(())
            }
            FaultKind::Hang => {
                add(&self.stats.hangs, 1);
                let _held = upstream;
                let mut buf = [0; 4096];
                loop {
                    match client.read(&mut buf).await {
                        Ok(0) => match sleep_forever().await {
                            Err(cancelled) => return Err(cancelled.into()),
                        },
                        Ok(_) => {}
                        Err(e) if e.cancelled().is_some() => return Err(e),
                        Err(_) => return Ok(()), // the client gave up
                    }
                }
            }
        }
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender finished: the end of stream was passed on.
    Eof,
    /// The byte budget of a destructive fault was reached.
    Budget,
}

/// Forwards `from` to `to` through `shaper` until the end of stream (passed on as a shutdown
/// of `to`'s writing side) or until `budget` bytes went through.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    shaper: &mut Shaper,
    budget: Option<u64>,
    forwarded: &Cell<u64>,
) -> io::Result<End> {
    let mut buf = vec![0; CHUNK];
    loop {
        let room = match budget {
            Some(b) if forwarded.get() >= b => return Ok(End::Budget),
            Some(b) => buf.len().min((b - forwarded.get()) as usize),
            None => buf.len(),
        };
        let n = from.read(&mut buf[..room]).await?;
        if n == 0 {
            to.shutdown(Shutdown::Write).await?;
            return Ok(End::Eof);
        }
        shaper.send(to, &buf[..n]).await?;
        add(forwarded, n as u64);
    }
}

/// The shaping of one direction: slicing, delay and bandwidth, with its own generator.
struct Shaper {
    rng: Rng,
    delay_ns: u64,
    slice: usize,
    bandwidth: u64,
    /// When the bandwidth allows the next byte out.
    free_at: Option<Instant>,
}

impl Shaper {
    fn new(config: &Config, seed: u64) -> Shaper {
        Shaper {
            rng: Rng::new(seed),
            delay_ns: u64::try_from(config.delay.as_nanos()).unwrap_or(u64::MAX),
            slice: config.slice,
            bandwidth: config.bandwidth,
            free_at: None,
        }
    }

    /// Sends `data` to `to`, piece by piece.
    async fn send(&mut self, to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let piece = match self.slice {
                0 => data.len(),
                max => 1 + self.rng.below(max.min(data.len()) as u64) as usize,
            };
            if self.delay_ns > 0 {
                let wait = self.rng.below(self.delay_ns.saturating_add(1));
                if wait > 0 {
                    sleep(Duration::from_nanos(wait)).await?;
                }
            }
            if self.bandwidth > 0 {
                let t = now();
                let start = self.free_at.map_or(t, |free| free.max(t));
                let nanos = piece as u128 * 1_000_000_000 / u128::from(self.bandwidth);
                self.free_at = Some(start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)));
                if start > t {
                    sleep_until(start).await?;
                }
            }
            to.write_all(&data[..piece]).await?;
            data = &data[piece..];
        }
        Ok(())
    }
}
