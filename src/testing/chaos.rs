//! A fault-injecting TCP proxy for testing network code, in the spirit of Mozilla's Vaurien.
//!
//! Put a [`ChaosProxy`] between the client and the server under test, in the same run, and
//! both meet a network that is slow, choppy, or breaks:
//!
//! - **shaping**, on every connection and in both directions: [`delay`](Config::delay) (each
//!   piece waits a random time before it is sent), [`slice`](Config::slice) (what is read is
//!   sent as pieces of random sizes, each its own write, so the peer's reads see small
//!   fragments), [`bandwidth`](Config::bandwidth) (a cap per direction, paced piece by piece);
//! - **one destructive fault** on a chosen share of connections, once the upstream has sent the
//!   client a random number of bytes: [`Reset`](FaultKind::Reset) (the client's connection is
//!   aborted with an RST), [`Hang`](FaultKind::Hang) (nothing more is forwarded either way; the
//!   connections are held open until the client's fails or the proxy stops),
//!   [`Close`](FaultKind::Close) (the client gets a clean end of stream early).
//!
//! The proxy never corrupts, reorders, duplicates or invents bytes: what reaches a peer is
//! always a prefix of what was sent to it.
//!
//! **Reproducible.** Every random choice derives from the [seed](Config::seed). Each
//! connection's [`Plan`] (its fault, the byte count, the seeds of its two directions' shaping)
//! is a pure function of the seed and the connection's index in accept order, so a test can
//! compute it in advance with [`Config::plan`], and a run that exposed a bug can be replayed.
//! The shaping draws are reproducible too, though where the network splits data into reads is
//! not.
//!
//! **On the virtual clock.** The proxy sleeps on the run's clock, so under
//! [`testing::run`](crate::testing::run) its delays and bandwidth cap cost no real time and
//! deadlines in the test fire at exact instants. With destructive faults, prefer a small
//! autojump threshold ([`MockClock::with_autojump`](crate::testing::MockClock::with_autojump)
//! with a few milliseconds) so that the clock does not jump while bytes are still on their way
//! through the kernel.
//!
//! The `chaos_proxy` example is this proxy behind a command line, to put in front of any
//! server.
//!
//! # Example
//!
//! An echo server behind a proxy that slices everything into pieces of at most 3 bytes and
//! delays each piece by up to 5 ms: every byte comes back, in order.
//!
//! ```
//! use std::io;
//! use std::time::Duration;
//! use hatchery::net::{TcpListener, TcpStream, serve_tcp};
//! use hatchery::testing::chaos::{ChaosProxy, Config};
//! use hatchery::{nursery, testing};
//!
//! async fn echo(conn: TcpStream) -> io::Result<()> {
//!     let mut buf = [0; 1024];
//!     loop {
//!         let n = conn.read(&mut buf).await?;
//!         if n == 0 {
//!             return Ok(());
//!         }
//!         conn.write_all(&buf[..n]).await?;
//!     }
//! }
//!
//! testing::run(async {
//!     let server = TcpListener::bind(([127, 0, 0, 1], 0))?;
//!     let config = Config::new().seed(7).slice(3).delay(Duration::from_millis(5));
//!     let proxy = ChaosProxy::new(server.local_addr()?, config)?;
//!     nursery(async |n| {
//!         n.start(|status| serve_tcp(server, echo, status)).await?;
//!         let addr = n.start(|status| proxy.serve(([127, 0, 0, 1], 0), status)).await?;
//!
//!         let conn = TcpStream::connect(addr).await?;
//!         conn.write_all(b"hello, chaos").await?;
//!         let mut back = Vec::new();
//!         let mut buf = [0; 64];
//!         while back.len() < 12 {
//!             let n = conn.read(&mut buf).await?;
//!             back.extend_from_slice(&buf[..n]);
//!         }
//!         assert_eq!(back, b"hello, chaos");
//!         n.cancel_scope().cancel(); // stops the servers
//!         Ok::<_, io::Error>(())
//!     })
//!     .await?;
//!     let stats = proxy.statistics();
//!     assert_eq!((stats.connections, stats.bytes_up, stats.bytes_down), (1, 12, 12));
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! .unwrap();
//! ```
//!
//! A plan, computed ahead: with `close(100)`, every connection is closed early, after the
//! number of bytes its plan says.
//!
//! ```
//! use hatchery::testing::chaos::{Config, FaultKind};
//!
//! let config = Config::new().seed(11).close(100).fault_within(5000);
//! let fault = config.plan(0).fault().expect("every connection gets a fault");
//! assert_eq!(fault.kind(), FaultKind::Close);
//! assert!(fault.after() <= 5000);
//! assert_eq!(config.plan(0), config.plan(0), "a pure function of the seed and the index");
//! ```

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use crate::error::NurseryError;
use crate::net::{Listen, TcpStream, connect_tcp, serve_tcp};
use crate::runtime::rng::{Rng, splitmix64};
use crate::{
    CancelError, Instant, TaskStatus, move_on_after, now, nursery, sleep, sleep_forever, sleep_until,
};

/// How long a connection closed by the [`Close`](FaultKind::Close) fault keeps reading (and
/// discarding) what the client still sends, so that the client sees a clean end of stream
/// rather than a reset.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// The size of each direction's read buffer.
const CHUNK: usize = 16 * 1024;

/// The default of [`Config::fault_within`].
const DEFAULT_FAULT_WITHIN: u64 = 4096;

// ---------------------------------------------------------------------------------------------
// Configuration and plans

/// A destructive fault's kind. (Exhaustive on purpose: a test that matches on it learns of a
/// new kind from the compiler.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Abort the client's connection: its next read fails with "connection reset".
    Reset,
    /// Stop forwarding and hold the connections open (the upstream one, if it was made),
    /// reading and discarding what the client sends, until the client's connection fails or the
    /// proxy stops. A client that only closes its side cleanly is still held: a hung peer would
    /// not notice either.
    Hang,
    /// Close the client's connection cleanly: it sees the end of stream (and the upstream
    /// connection is closed).
    Close,
}

/// A destructive fault and when it strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fault {
    kind: FaultKind,
    after: u64,
}

impl Fault {
    /// What the fault does.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    /// It strikes once the upstream has sent the client this many bytes (0: at once, before the
    /// upstream is even connected); [`Config::strike_delay`] after that.
    pub fn after(&self) -> u64 {
        self.after
    }
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

/// What happens to one connection: a pure function of the seed and the connection's index
/// ([`Config::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Plan {
    index: u64,
    fault: Option<Fault>,
    /// The seed of the client-to-upstream direction's shaping draws.
    up_seed: u64,
    /// The seed of the upstream-to-client direction's shaping draws.
    down_seed: u64,
}

impl Plan {
    /// The connection's index, in accept order from 0. (A connection reset before the proxy
    /// could read its peer's address gets none: it is counted in
    /// [`ChaosStatistics::errors`] and closed.)
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Its destructive fault, if it gets one.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }
}

/// What a [`ChaosProxy`] does to connections. [`Config::new`] is a transparent proxy: no
/// shaping, no faults; each setter adds one kind of chaos.
///
/// ```
/// use std::time::Duration;
/// use hatchery::testing::chaos::Config;
///
/// let config = Config::new()
///     .seed(42)
///     .delay(Duration::from_millis(20))
///     .slice(16)
///     .bandwidth(64 * 1024)
///     .reset(10)
///     .hang(5)
///     .close(5)
///     .fault_within(64 * 1024);
/// assert!(config.validate().is_ok());
/// assert!(Config::new().reset(60).close(50).validate().is_err(), "110 percent");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a Config does nothing until a ChaosProxy is built with it; its setters return the new value"]
pub struct Config {
    seed: u64,
    delay: Duration,
    slice: usize,
    bandwidth: u64,
    reset: u32,
    hang: u32,
    close: u32,
    fault_within: u64,
    strike_delay: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

impl Config {
    /// A transparent proxy: seed 0, no shaping, no faults; faults, once enabled, strike within
    /// the first 4096 bytes.
    pub fn new() -> Config {
        Config {
            seed: 0,
            delay: Duration::ZERO,
            slice: 0,
            bandwidth: 0,
            reset: 0,
            hang: 0,
            close: 0,
            fault_within: DEFAULT_FAULT_WITHIN,
            strike_delay: Duration::ZERO,
        }
    }

    /// The seed of every random choice (default 0).
    pub fn seed(mut self, seed: u64) -> Config {
        self.seed = seed;
        self
    }

    /// Each piece waits a random time in `[0, max]` before it is sent (default zero).
    pub fn delay(mut self, max: Duration) -> Config {
        self.delay = max;
        self
    }

    /// Data goes out in pieces of a random size in `[1, max]` bytes, one write each (default 0:
    /// each chunk is sent as it was read).
    pub fn slice(mut self, max: usize) -> Config {
        self.slice = max;
        self
    }

    /// At most this many bytes per second per direction of each connection (default 0:
    /// unlimited).
    pub fn bandwidth(mut self, bytes_per_second: u64) -> Config {
        self.bandwidth = bytes_per_second;
        self
    }

    /// This percentage of connections is reset (default 0).
    pub fn reset(mut self, percent: u32) -> Config {
        self.reset = percent;
        self
    }

    /// This percentage of connections hangs (default 0).
    pub fn hang(mut self, percent: u32) -> Config {
        self.hang = percent;
        self
    }

    /// This percentage of connections is closed early (default 0).
    pub fn close(mut self, percent: u32) -> Config {
        self.close = percent;
        self
    }

    /// A destructive fault strikes once the upstream has sent the client a random number of
    /// bytes in `[0, bytes]` (default 4096).
    pub fn fault_within(mut self, bytes: u64) -> Config {
        self.fault_within = bytes;
        self
    }

    /// ...and this long after those bytes went out (default zero: at once, so the client may
    /// well receive the last bytes and the reset or end of stream together).
    pub fn strike_delay(mut self, delay: Duration) -> Config {
        self.strike_delay = delay;
        self
    }

    /// Checks that the fault percentages add up to at most 100.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if they add up to more.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let total = u64::from(self.reset) + u64::from(self.hang) + u64::from(self.close);
        if total > 100 { Err(InvalidConfig { total }) } else { Ok(()) }
    }

    /// The plan of connection number `index` (in accept order, from 0): the same for the same
    /// seed and fault settings, whatever else happens in the run. (Of percentages that
    /// [`validate`](Config::validate) refuses, the first ones win: reset, then hang, then close.)
    pub fn plan(&self, index: u64) -> Plan {
        let mut rng = Rng::new(self.seed ^ splitmix64(index));
        let roll = rng.below(100) as u32;
        let kind = if roll < self.reset {
            Some(FaultKind::Reset)
        } else if roll < self.reset.saturating_add(self.hang) {
            Some(FaultKind::Hang)
        } else if roll < self.reset.saturating_add(self.hang).saturating_add(self.close) {
            Some(FaultKind::Close)
        } else {
            None
        };
        let after = rng.below(self.fault_within.saturating_add(1));
        Plan {
            index,
            fault: kind.map(|kind| Fault { kind, after }),
            up_seed: rng.next_u64(),
            down_seed: rng.next_u64(),
        }
    }
}

/// A [`Config`] whose fault percentages add up to more than 100.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the chaos proxy's fault percentages add up to {total}, more than 100")]
pub struct InvalidConfig {
    total: u64,
}

impl InvalidConfig {
    /// What the percentages add up to.
    pub fn total(&self) -> u64 {
        self.total
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and events

/// What [`ChaosProxy::statistics`] reports: counters over the proxy's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChaosStatistics {
    /// Connections accepted.
    pub connections: u64,
    /// Connections being handled now.
    pub active: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: u64,
    /// [`Reset`](FaultKind::Reset) faults applied.
    pub resets: u64,
    /// [`Hang`](FaultKind::Hang) faults applied.
    pub hangs: u64,
    /// [`Close`](FaultKind::Close) faults applied.
    pub closes: u64,
    /// Connections whose upstream could not be reached (the client's connection is closed).
    pub upstream_failures: u64,
    /// Connections that ended with an error from either peer (a reset, say), including those
    /// reset before the proxy could read the client's address (which get no index).
    pub errors: u64,
}

impl fmt::Display for ChaosStatistics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connection(s) ({} active), {} byte(s) up, {} down; faults: {} reset, {} hang, {} close; \
             {} upstream failure(s), {} connection error(s)",
            self.connections,
            self.active,
            self.bytes_up,
            self.bytes_down,
            self.resets,
            self.hangs,
            self.closes,
            self.upstream_failures,
            self.errors
        )
    }
}

/// The live counters behind [`ChaosStatistics`].
#[derive(Debug, Default)]
struct Counters {
    connections: Cell<u64>,
    active: Cell<u64>,
    bytes_up: Cell<u64>,
    bytes_down: Cell<u64>,
    resets: Cell<u64>,
    hangs: Cell<u64>,
    closes: Cell<u64>,
    upstream_failures: Cell<u64>,
    errors: Cell<u64>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
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

/// Something that happened to a connection, for [`ChaosProxy::on_event`]. Its `Display` is one
/// log line, starting with `#` and the connection's index.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A connection was accepted and given its plan.
    Accepted {
        /// The plan (its index is the connection's).
        plan: Plan,
        /// The client's address.
        client: SocketAddr,
    },
    /// The upstream could not be reached; the client's connection is closed.
    UpstreamFailed {
        /// The connection's index.
        index: u64,
        /// Why.
        error: &'a io::Error,
    },
    /// A destructive fault strikes now.
    Striking {
        /// The connection's index.
        index: u64,
        /// The fault.
        fault: Fault,
    },
    /// Both directions reached their end of stream; the connection is done.
    Finished {
        /// The connection's index.
        index: u64,
        /// Bytes forwarded from the client to the upstream.
        bytes_up: u64,
        /// Bytes forwarded from the upstream to the client.
        bytes_down: u64,
    },
    /// The connection ended with an error (a reset from either peer, say; when forwarding
    /// fails, both connections are aborted so that each peer learns of it).
    Failed {
        /// The connection's index.
        index: u64,
        /// The error.
        error: &'a io::Error,
    },
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Accepted { plan, client } => match plan.fault {
                Some(fault) => write!(f, "#{} {client}: {fault}", plan.index),
                None => write!(f, "#{} {client}: no fault", plan.index),
            },
            Event::UpstreamFailed { index, error } => write!(f, "#{index}: upstream unreachable: {error}"),
            Event::Striking { index, fault } => write!(f, "#{index}: {fault}: striking"),
            Event::Finished { index, bytes_up, bytes_down } => {
                write!(f, "#{index}: done, {bytes_up} byte(s) up, {bytes_down} down")
            }
            Event::Failed { index, error } => write!(f, "#{index}: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// A fault-injecting proxy to one upstream; see the [module documentation](self).
///
/// Run it with [`serve`](ChaosProxy::serve) in a nursery; every connection is a task of its
/// own that borrows the proxy, so the proxy lives on the stack of the code that opened the
/// nursery, and [`statistics`](ChaosProxy::statistics) and [`plans`](ChaosProxy::plans) can be
/// read while it serves and after.
pub struct ChaosProxy<'a> {
    config: Config,
    upstream: Upstream,
    next_index: Cell<u64>,
    counters: Counters,
    record: Option<RefCell<Vec<(SocketAddr, Plan)>>>,
    observer: Option<Observer<'a>>,
}

/// Where a [`ChaosProxy`] forwards to.
#[derive(Debug, Clone)]
enum Upstream {
    Addr(SocketAddr),
    Host(String, u16),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Addr(addr) => write!(f, "{addr}"),
            Upstream::Host(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Upstream::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// What [`ChaosProxy::on_event`] installs.
type Observer<'a> = Box<dyn Fn(&Event<'_>) + 'a>;

impl fmt::Debug for ChaosProxy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosProxy")
            .field("config", &self.config)
            .field("upstream", &format_args!("{}", self.upstream))
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl<'a> ChaosProxy<'a> {
    /// A proxy to `upstream`.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if the fault percentages add up to more than 100.
    pub fn new(upstream: SocketAddr, config: Config) -> Result<ChaosProxy<'a>, InvalidConfig> {
        ChaosProxy::build(Upstream::Addr(upstream), config)
    }

    /// A proxy to `host:port`, where `host` is a name (resolved for each connection, with
    /// [`connect_tcp`]'s happy eyeballs) or an IP address.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] if the fault percentages add up to more than 100.
    pub fn for_host(
        host: impl Into<String>,
        port: u16,
        config: Config,
    ) -> Result<ChaosProxy<'a>, InvalidConfig> {
        ChaosProxy::build(Upstream::Host(host.into(), port), config)
    }

    fn build(upstream: Upstream, config: Config) -> Result<ChaosProxy<'a>, InvalidConfig> {
        config.validate()?;
        Ok(ChaosProxy {
            config,
            upstream,
            next_index: Cell::new(0),
            counters: Counters::default(),
            record: None,
            observer: None,
        })
    }

    /// Records every connection's client address and plan, for [`plans`](ChaosProxy::plans).
    /// (A record a connection: memory grows with the connections served.)
    pub fn recording(mut self) -> ChaosProxy<'a> {
        self.record = Some(RefCell::new(Vec::new()));
        self
    }

    /// Calls `observer` with each [`Event`], in the task of the connection it concerns: to log
    /// (`.on_event(|e| println!("{e}"))`) or to collect them (it may borrow, say a
    /// `RefCell<Vec<String>>` of the test's: the proxy then lives no longer than what it
    /// borrows). A panic in it is a panic of that
    /// connection's task, which fails [`serve`](ChaosProxy::serve).
    pub fn on_event(mut self, observer: impl Fn(&Event<'_>) + 'a) -> ChaosProxy<'a> {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters so far.
    pub fn statistics(&self) -> ChaosStatistics {
        let c = &self.counters;
        ChaosStatistics {
            connections: c.connections.get(),
            active: c.active.get(),
            bytes_up: c.bytes_up.get(),
            bytes_down: c.bytes_down.get(),
            resets: c.resets.get(),
            hangs: c.hangs.get(),
            closes: c.closes.get(),
            upstream_failures: c.upstream_failures.get(),
            errors: c.errors.get(),
        }
    }

    /// Every connection's client address and plan, in accept order, if the proxy is
    /// [`recording`](ChaosProxy::recording) (empty otherwise). A test finds the plan of one of
    /// its connections by the connection's local address.
    pub fn plans(&self) -> Vec<(SocketAddr, Plan)> {
        self.record.as_ref().map(|r| r.borrow().clone()).unwrap_or_default()
    }

    /// The plan of the latest connection from `client` (a test's connection's local address),
    /// if the proxy is [`recording`](ChaosProxy::recording) and has accepted one.
    pub fn plan_for(&self, client: SocketAddr) -> Option<Plan> {
        let record = self.record.as_ref()?.borrow();
        record.iter().rev().find(|(peer, _)| *peer == client).map(|&(_, plan)| plan)
    }

    /// Listens on `listen` (an address, port 0 for any free port, or a
    /// [`TcpListener`](crate::net::TcpListener)) and proxies every connection, each in a task of
    /// its own, until cancelled; reports the bound address through `status`, for
    /// [`Nursery::start`](crate::Nursery::start). Cancelling it ends every connection (hung ones
    /// too) and closes the listener.
    ///
    /// # Errors
    ///
    /// Binding errors, fatal accept errors (as [`serve_tcp`]: running out of descriptors is
    /// retried), and [`Cancelled`](crate::Cancelled) when stopped, in the error type of the
    /// caller's nursery (`io::Error`, [`Error`](crate::Error), or any type `serve_tcp` takes).
    /// Problems of single connections are counted in [`statistics`](ChaosProxy::statistics)
    /// and reported as [`Event`]s, never returned.
    pub async fn serve<E>(
        &self,
        listen: impl Into<Listen>,
        status: TaskStatus<SocketAddr>,
    ) -> Result<Infallible, E>
    where
        E: From<io::Error> + From<NurseryError<E>> + CancelError,
    {
        // A plain closure, not an async one: its body runs as each connection is accepted, so
        // indexes follow the accept order (a child's first poll may not: a batch can run in
        // any order).
        let handler = |client: TcpStream| {
            let accepted = client.peer_addr().map(|peer| {
                let index = self.next_index.get();
                self.next_index.set(index + 1);
                if let Some(record) = &self.record {
                    record.borrow_mut().push((peer, self.config.plan(index)));
                }
                (index, peer)
            });
            let handled = self.handle(accepted, client);
            async move { handled.await.map_err(E::from) }
        };
        serve_tcp(listen, handler, status).await
    }

    /// Tells the observer, if any.
    fn emit(&self, event: &Event<'_>) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }

    /// One connection, with its index and peer address (or why there is none): fails only
    /// when cancelled; its own failures are counted and reported.
    async fn handle(&self, accepted: io::Result<(u64, SocketAddr)>, client: TcpStream) -> io::Result<()> {
        add(&self.counters.connections, 1);
        let _active = Active::enter(&self.counters.active);
        let Ok((index, peer)) = accepted else {
            // Reset before anything could be done with it: dropping it closes it.
            add(&self.counters.errors, 1);
            return Ok(());
        };
        match self.proxy(index, peer, &client).await {
            Err(e) if e.cancelled().is_some() => Err(e),
            Ok(()) => Ok(()),
            Err(e) => {
                add(&self.counters.errors, 1);
                self.emit(&Event::Failed { index, error: &e });
                Ok(())
            }
        }
    }

    /// Proxies connection `index` according to its plan.
    async fn proxy(&self, index: u64, peer: SocketAddr, client: &TcpStream) -> io::Result<()> {
        let plan = self.config.plan(index);
        self.emit(&Event::Accepted { plan, client: peer });

        if let Some(fault) = plan.fault.filter(|f| f.after == 0) {
            return self.apply(index, fault, client, None).await;
        }
        let connected = match &self.upstream {
            Upstream::Addr(addr) => TcpStream::connect(*addr).await,
            Upstream::Host(host, port) => connect_tcp(host, *port).await,
        };
        let upstream = match connected {
            Ok(s) => s,
            Err(e) if e.cancelled().is_some() => return Err(e),
            Err(e) => {
                add(&self.counters.upstream_failures, 1);
                self.emit(&Event::UpstreamFailed { index, error: &e });
                return Ok(()); // dropping the client's connection closes it
            }
        };

        let up = Direction::new(&self.config, plan.up_seed, None, &self.counters.bytes_up);
        let down = Direction::new(
            &self.config,
            plan.down_seed,
            plan.fault.map(|f| f.after),
            &self.counters.bytes_down,
        );
        let forwarded = nursery(async |n| {
            n.start_soon(up.pump(client, &upstream));
            let end = down.pump(&upstream, client).await?;
            if end == End::Budget {
                n.cancel_scope().cancel(); // stop the other direction too
            }
            Ok(end)
        })
        .await;
        match forwarded.map_err(io::Error::from) {
            Ok(Some(End::Budget)) => {
                let fault = plan.fault.expect("hatchery internal error: a byte budget without a fault");
                self.apply(index, fault, client, Some(upstream)).await
            }
            Ok(_) => {
                let (bytes_up, bytes_down) = (up.forwarded.get(), down.forwarded.get());
                self.emit(&Event::Finished { index, bytes_up, bytes_down });
                Ok(())
            }
            Err(e) if e.cancelled().is_some() => Err(e),
            Err(e) => {
                // One side failed (a reset, say): abort the other, so each peer learns of it.
                client.close_with_reset();
                upstream.close_with_reset();
                Err(e)
            }
        }
    }

    /// Strikes with a destructive fault. `upstream` is the upstream connection, if it was made:
    /// `Reset` and `Close` close it, `Hang` holds it.
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
        let counter = match fault.kind {
            FaultKind::Reset => &self.counters.resets,
            FaultKind::Hang => &self.counters.hangs,
            FaultKind::Close => &self.counters.closes,
        };
        add(counter, 1);
        self.emit(&Event::Striking { index, fault });
        match fault.kind {
            FaultKind::Reset => {
                drop(upstream);
                client.close_with_reset(); // the RST goes out when the caller drops the stream
                Ok(())
            }
            FaultKind::Close => {
                drop(upstream);
                client.shutdown(Shutdown::Write).await?;
                // Read what the client still sends, so that closing does not reset the
                // connection (and destroy the end of stream the client has not read yet).
                let mut buf = [0; 4096];
                move_on_after(CLOSE_LINGER, async {
                    while client.read(&mut buf).await? > 0 {}
                    Ok::<_, io::Error>(())
                })
                .await?;
                Ok(())
            }
            FaultKind::Hang => {
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

/// One direction of a connection: its shaping (slicing, delay and bandwidth, with its own
/// generator), its byte budget, and what went through.
struct Direction<'a> {
    shaper: RefCell<Shaper>,
    budget: Option<u64>,
    /// Bytes forwarded on this connection.
    forwarded: Cell<u64>,
    /// The proxy's total for this direction.
    total: &'a Cell<u64>,
}

impl<'a> Direction<'a> {
    fn new(config: &Config, seed: u64, budget: Option<u64>, total: &'a Cell<u64>) -> Direction<'a> {
        let shaper = Shaper {
            rng: Rng::new(seed),
            delay_ns: u64::try_from(config.delay.as_nanos()).unwrap_or(u64::MAX),
            slice: config.slice,
            bandwidth: config.bandwidth,
            free_at: None,
        };
        Direction { shaper: RefCell::new(shaper), budget, forwarded: Cell::new(0), total }
    }

    /// Counts `n` bytes forwarded.
    fn count(&self, n: usize) {
        add(&self.forwarded, n as u64);
        add(self.total, n as u64);
    }

    /// Forwards `from` to `to` until the end of stream (passed on as a shutdown of `to`'s
    /// writing side) or until the budget is spent.
    async fn pump(&self, from: &TcpStream, to: &TcpStream) -> io::Result<End> {
        let mut buf = vec![0; CHUNK];
        loop {
            let room = match self.budget {
                Some(b) if self.forwarded.get() >= b => return Ok(End::Budget),
                Some(b) => buf.len().min(usize::try_from(b - self.forwarded.get()).unwrap_or(usize::MAX)),
                None => buf.len(),
            };
            let n = from.read(&mut buf[..room]).await?;
            if n == 0 {
                to.shutdown(Shutdown::Write).await?;
                return Ok(End::Eof);
            }
            let mut data = &buf[..n];
            while !data.is_empty() {
                // The shaper is only borrowed between awaits.
                let (piece, wait) = self.shaper.borrow_mut().next_piece(data.len(), now());
                if let Some(until) = wait {
                    sleep_until(until).await?;
                }
                let written = match to.write_all(&data[..piece]).await {
                    Ok(()) => piece,
                    Err(e) => {
                        // What went out before the failure went through all the same.
                        self.count(e.written);
                        return Err(e.into());
                    }
                };
                self.count(written);
                data = &data[piece..];
            }
        }
    }
}

/// The random draws of one direction.
struct Shaper {
    rng: Rng,
    delay_ns: u64,
    slice: usize,
    bandwidth: u64,
    /// When the bandwidth allows the next byte out.
    free_at: Option<Instant>,
}

impl Shaper {
    /// The size of the next piece of the `len` bytes left, and when it may go out (`None`: at
    /// once), at time `t`.
    fn next_piece(&mut self, len: usize, t: Instant) -> (usize, Option<Instant>) {
        let piece = match self.slice {
            0 => len,
            max => 1 + self.rng.below(max.min(len) as u64) as usize,
        };
        let mut at = t;
        if self.delay_ns > 0 {
            at += Duration::from_nanos(self.rng.below(self.delay_ns.saturating_add(1)));
        }
        if self.bandwidth > 0 {
            let start = self.free_at.map_or(at, |free| free.max(at));
            let nanos = piece as u128 * 1_000_000_000 / u128::from(self.bandwidth);
            self.free_at = Some(start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)));
            at = start;
        }
        (piece, (at > t).then_some(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_percentages_and_depend_only_on_seed_and_index() {
        let config = Config::new().seed(5).reset(20).hang(30).close(10).fault_within(100);
        let mut counts = [0u32; 4];
        for i in 0..10_000 {
            let plan = config.plan(i);
            assert_eq!(
                plan,
                config.clone().slice(9).delay(Duration::from_secs(1)).plan(i),
                "shaping changes no plan"
            );
            assert_eq!(plan.index(), i);
            match plan.fault() {
                None => counts[3] += 1,
                Some(f) => {
                    assert!(f.after() <= 100);
                    counts[f.kind() as usize] += 1;
                }
            }
        }
        // 20 / 30 / 10 / 40 percent of 10,000, within a few standard deviations.
        for (got, want) in counts.iter().zip([2000, 3000, 1000, 4000]) {
            assert!(got.abs_diff(want) < 250, "{counts:?}");
        }
        assert_ne!(Config::new().seed(6).reset(50).plan(0), Config::new().seed(5).reset(50).plan(0));
        assert!((0..100).all(|i| Config::new().plan(i).fault().is_none()), "no faults by default");
        assert!((0..100).all(|i| Config::new().hang(100).plan(i).fault().unwrap().kind() == FaultKind::Hang));
    }

    #[test]
    fn percentages_above_100_are_refused_with_their_total() {
        let err = Config::new().reset(60).hang(30).close(11).validate().unwrap_err();
        assert_eq!(err.total(), 101);
        assert_eq!(err.to_string(), "the chaos proxy's fault percentages add up to 101, more than 100");
        let err = ChaosProxy::new(([127, 0, 0, 1], 1).into(), Config::new().close(u32::MAX)).unwrap_err();
        assert_eq!(err.total(), u64::from(u32::MAX));
        assert!(ChaosProxy::new(([127, 0, 0, 1], 1).into(), Config::new().reset(100)).is_ok());
    }

    #[test]
    fn pieces_respect_the_slice_the_delay_and_the_bandwidth() {
        let t0 = Instant::from_origin(Duration::from_secs(1));
        let config = Config::new().slice(10).delay(Duration::from_millis(4)).bandwidth(1000);
        let mut shaper = Direction::new(&config, 1, None, &Cell::new(0)).shaper.into_inner();
        let (mut sent, mut last) = (0, t0);
        while sent < 1000 {
            let (piece, at) = shaper.next_piece(1000 - sent, t0);
            assert!((1..=10).contains(&piece));
            let at = at.unwrap_or(t0);
            assert!(at >= last, "pieces go out in order");
            // At 1,000 bytes per second, the bytes before this piece took at least `sent` ms.
            assert!(at - t0 >= Duration::from_millis(sent as u64), "{sent} bytes at {:?}", at - t0);
            sent += piece;
            last = at;
        }
        let mut plain = Direction::new(&Config::new(), 1, None, &Cell::new(0)).shaper.into_inner();
        assert_eq!(plain.next_piece(700, t0), (700, None), "no shaping: as read, at once");
    }
}
