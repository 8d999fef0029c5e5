//! A chat server in the spirit of Tornado's chat demo, over plain TCP: every line a client sends
//! goes to everyone, prefixed with the sender's name, with notices when people join and leave.
//!
//! ```text
//! cargo run --example chat_server -- --addr 127.0.0.1:7001
//! nc 127.0.0.1 7001        # in two or more terminals; type lines
//! ```
//!
//! What it shows:
//! - one task per connection (`serve_tcp`), and inside it a nursery of two: a reader that turns
//!   lines into broadcasts, and a writer that sends the client what others said;
//! - shared state borrowed from the enclosing scope: the room is a `RefCell<BTreeMap>` of
//!   clients that every connection task borrows; one thread, so no `Arc`, no `Mutex` (and no
//!   `RefCell` borrow is held across an `await`);
//! - **a slow client cannot stall the others.** Each client has a bounded outbox (a channel of
//!   `--outbox` messages, 64 by default) and the broadcast only ever uses `try_send`, so sending
//!   to everyone never waits. When a client's outbox is full, its writer has fallen that far
//!   behind (its socket is not draining), and the server **disconnects that client** (cancels
//!   its connection's scope) and tells the room. We drop the client rather than drop messages
//!   for it: a client that silently misses lines would show a conversation that never happened,
//!   while a disconnected one knows it and can reconnect. A message here is everything one
//!   client sent in one read, so a burst of lines counts once;
//! - leaving politely: at end of input the client leaves the room, and its writer still
//!   delivers what was queued for it (within `DRAIN_TIMEOUT`) before the connection closes;
//! - graceful shutdown on Ctrl-C.
//!
//! The first line on stdout is `listening on <addr>`; the server logs joins, leaves and drops
//! after it (`--quiet` turns that off). Protocol, for clients: the server sends
//! `* welcome, guest-N; K other(s) here`, then lines `guest-M: text`, `* guest-M joined`,
//! `* guest-M left` and `* guest-M was disconnected (too slow)`. Lines longer than
//! `MAX_LINE` bytes end the connection.
//!
//! `tests/examples_net.rs` runs it with several clients, one of which never reads.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use hatchery::net::{TcpStream, serve_tcp};
use hatchery::signal::ctrl_c_cancels;
use hatchery::{
    CancelError, CancelHandle, CancelScope, Error, Receiver, Sender, channel, move_on_after, nursery,
};

#[path = "common/cli.rs"]
mod cli;

const USAGE: &str = "\
usage: chat_server [--addr HOST:PORT] [--outbox N] [--quiet]

  --addr HOST:PORT   address to listen on (default 127.0.0.1:7001; port 0 picks a free one)
  --outbox N         messages queued for a client before it counts as too slow (default 64)
  --quiet            do not log joins, leaves and drops";

/// Longest line accepted from a client.
const MAX_LINE: usize = 8 * 1024;
/// The most a writer sends in one write (it gathers queued messages up to this).
const MAX_BATCH: usize = 64 * 1024;
/// How long a leaving client's writer may take to deliver what was queued for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client, as the room sees it.
struct Client {
    name: Rc<str>,
    outbox: Sender<Rc<str>>,
    /// Cancels the client's connection (when it is too slow).
    kick: CancelHandle,
}

/// Everyone connected, shared by all connection tasks.
struct Room {
    clients: RefCell<BTreeMap<u64, Client>>,
    next_id: Cell<u64>,
    outbox_capacity: usize,
    quiet: bool,
}

impl Room {
    fn log(&self, line: &str) {
        if !self.quiet {
            println!("{line}");
        }
    }

    /// Queues `msg` for everyone. Never waits: a client whose outbox is full is disconnected,
    /// and the notice about it is broadcast in turn (which may find more slow clients).
    fn broadcast(&self, msg: Rc<str>) {
        let mut queue = VecDeque::from([msg]);
        let mut slow = Vec::new();
        while let Some(msg) = queue.pop_front() {
            for (&id, client) in self.clients.borrow().iter() {
                if let Err(e) = client.outbox.try_send(msg.clone())
                    && e.is_full()
                {
                    slow.push(id);
                }
                // Any other error: that client's writer is gone and the client is leaving.
            }
            for id in slow.drain(..) {
                let removed = self.clients.borrow_mut().remove(&id);
                if let Some(client) = removed {
                    client.kick.cancel_with_reason("too slow");
                    self.log(&format!("{}: disconnected (too slow)", client.name));
                    queue.push_back(format!("* {} was disconnected (too slow)\n", client.name).into());
                }
            }
        }
    }

    /// Removes a client (if it is still there) and tells the others. False if it was already
    /// gone (disconnected for being slow).
    fn leave(&self, id: u64) -> bool {
        let removed = self.clients.borrow_mut().remove(&id);
        match removed {
            Some(client) => {
                self.log(&format!("{}: left", client.name));
                self.broadcast(format!("* {} left\n", client.name).into());
                true
            }
            None => false,
        }
    }
}

fn main() -> ExitCode {
    let mut flags = cli::Flags::from_env(USAGE);
    let addr: SocketAddr = flags.get("addr", SocketAddr::from(([127, 0, 0, 1], 7001)));
    let outbox_capacity: usize = flags.get("outbox", 64);
    let quiet = flags.switch("quiet");
    flags.finish();
    if outbox_capacity == 0 {
        cli::fail(USAGE, "--outbox must be at least 1");
    }

    let room = Room { clients: RefCell::new(BTreeMap::new()), next_id: Cell::new(1), outbox_capacity, quiet };
    match hatchery::run(ctrl_c_cancels(serve(addr, &room))) {
        Ok(outcome) => {
            if let Some(signal) = outcome.signal() {
                println!("shutting down (signal {signal})");
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("chat_server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, room: &Room) -> Result<(), Error> {
    nursery(async |n| {
        let handler = async |conn: TcpStream| client(conn, room).await;
        let bound = n.start(|status| serve_tcp(addr, handler, status)).await?;
        println!("listening on {bound}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// One client, from joining to leaving.
async fn client(conn: TcpStream, room: &Room) -> Result<(), Error> {
    let id = room.next_id.replace(room.next_id.get() + 1);
    let name: Rc<str> = format!("guest-{id}").into();
    let peer = conn.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let (outbox, rx) = channel::<Rc<str>>(room.outbox_capacity);
    let others = room.clients.borrow().len();
    // The outbox is empty, so this cannot fail.
    let _ = outbox.try_send(format!("* welcome, {name}; {others} other(s) here\n").into());
    room.log(&format!("{name}: joined from {peer}"));
    room.broadcast(format!("* {name} joined\n").into());

    let scope = CancelScope::new();
    let kick = scope.handle();
    room.clients.borrow_mut().insert(id, Client { name: name.clone(), outbox, kick: kick.clone() });
    let session = scope
        .run(nursery(async |n| {
            n.start_soon(writer(&conn, rx));
            let read = reader(&conn, room, &name).await;
            // Leaving (end of input, or a read error): out of the room, so nothing more is
            // queued; the writer delivers what already was, then sees the end of its channel.
            room.leave(id);
            kick.set_deadline(hatchery::now() + DRAIN_TIMEOUT);
            read
        }))
        .await;
    // Gone for any other reason than the end of its input: make sure it left the room.
    room.leave(id);
    match session {
        Ok(Some(_)) => Ok(()),
        // Disconnected for being slow (or its queued messages did not drain in time).
        Ok(None) => Ok(()),
        Err(e) => {
            let e = Error::from(e);
            if e.cancelled().is_some() {
                return Err(e); // the server is shutting down
            }
            if let Some(io) = io_error(&e)
                && io.kind() == io::ErrorKind::InvalidData
            {
                // Best effort: tell the client why, then close.
                let _ =
                    move_on_after(Duration::from_secs(1), conn.write_all(b"* line too long; bye\n")).await;
            }
            room.log(&format!("{name}: {e}"));
            Ok(())
        }
    }
}

/// The first `io::Error` inside `e`, if any.
fn io_error(e: &Error) -> Option<&io::Error> {
    match e {
        Error::Io(io) => Some(io),
        Error::Nursery(group) => group.errors().iter().find_map(io_error),
        _ => None,
    }
}

/// Reads lines until the end of input and broadcasts them, one message per read.
async fn reader(conn: &TcpStream, room: &Room, name: &str) -> Result<(), Error> {
    let mut buf = [0; 4096];
    let mut pending = Vec::new();
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let mut message = String::new();
        let mut start = 0;
        while let Some(len) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + len];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                message.push_str(name);
                message.push_str(": ");
                message.push_str(&String::from_utf8_lossy(line));
                message.push('\n');
            }
            start += len + 1;
        }
        pending.drain(..start);
        if !message.is_empty() {
            room.broadcast(message.into());
        }
        if pending.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long").into());
        }
    }
}

/// Sends the client its queued messages, gathering whatever is queued into one write, until
/// the outbox ends (the client left the room).
async fn writer(conn: &TcpStream, outbox: Receiver<Rc<str>>) -> Result<(), Error> {
    let mut batch = Vec::new();
    loop {
        match outbox.recv().await {
            Ok(msg) => batch.extend_from_slice(msg.as_bytes()),
            Err(e) if e.is_end_of_channel() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        while batch.len() < MAX_BATCH {
            let Ok(msg) = outbox.try_recv() else { break };
            batch.extend_from_slice(msg.as_bytes());
        }
        conn.write_all(&batch).await?;
        batch.clear();
    }
}
