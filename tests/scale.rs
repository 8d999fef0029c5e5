//! Scale: 10,000 concurrent connections to one `serve_tcp` server, on one thread.
//!
//! The server runs in this test process; the clients run in a child process (this test binary
//! again, in a mode of its own, with 10,000 client tasks on one hatchery run), so that each
//! process needs one descriptor per connection, not two. Every client connects and sends
//! `hello <i>`; the server answers no one until all 10,000 connections are open at the same
//! time, then answers each `hi <i>`; each client checks its answer and closes. (Messages end
//! with a newline.)
//!
//! The test raises its soft limit on open files to what it needs. If the hard limit is too low
//! for 10,000 connections, it runs as many as fit and says so on stdout (it does not fail).
//! `HATCHERY_SCALE_CONNECTIONS=N` runs another number.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hatchery::net::{Listen, TcpListener, TcpStream, serve_tcp};
use hatchery::{CapacityLimiter, Error, Event, fail_after, nursery, sleep};

/// Descriptors a process needs beyond one per connection.
const MARGIN: u64 = 64;
/// How long the whole exchange may take (real time).
const DEADLINE: Duration = Duration::from_secs(120);
/// Set (to `addr count`) in the environment of the client process.
const CLIENT_MODE: &str = "HATCHERY_SCALE_TEST_CLIENTS";

/// The number of connections asked for.
fn wanted() -> usize {
    std::env::var("HATCHERY_SCALE_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// Raises the soft limit on open files for `connections` (one descriptor each); returns how
/// many connections fit under the hard limit.
fn fit(connections: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let need = connections as u64 + MARGIN;
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let target = need.min(hard);
    if limit.current.is_some_and(|soft| soft < target) {
        limit.current = Some(target);
        setrlimit(Resource::Nofile, limit).expect("raising the soft limit on open files");
    }
    let fits = usize::try_from(target.saturating_sub(MARGIN)).unwrap_or(usize::MAX).min(connections);
    if fits < connections {
        println!(
            "scale: the hard limit on open files is {hard}: running {fits} connections instead of {connections}"
        );
    }
    fits
}

/// A listener with the kernel's full accept queue (`TcpListener::bind` asks for 4096).
fn listener() -> TcpListener {
    TcpListener::bind(([127, 0, 0, 1], 0)).expect("binds a loopback port")
}

/// The client process, started by [`ten_thousand_concurrent_connections_on_one_thread`]:
/// spawned, with its stdout lines on a channel and its exit status on another; killed on drop.
struct Clients {
    pid: u32,
    lines: mpsc::Receiver<String>,
    status: mpsc::Receiver<std::io::Result<ExitStatus>>,
    exited: Option<ExitStatus>,
}

impl Clients {
    fn spawn(addr: SocketAddr, count: usize) -> Clients {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "client_process", "--nocapture", "--test-threads=1"])
            .env(CLIENT_MODE, format!("{addr} {count}"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("the client process starts");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let pid = child.id();
        let (status_tx, status) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = status_tx.send(child.wait());
        });
        Clients { pid, lines, status, exited: None }
    }

    /// The exit status, if the process has exited.
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = Some(self.status.try_recv().ok()?.expect("waiting for the client process"));
        }
        self.exited
    }

    /// Waits (bounded) for the exit; the status and the output.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let status = match self.exited {
            Some(status) => status,
            None => match self.status.recv_timeout(DEADLINE) {
                Ok(status) => status.expect("waiting for the client process"),
                Err(_) => {
                    panic!(
                        "the client process did not exit; output: {:?}",
                        self.lines.try_iter().collect::<Vec<_>>()
                    )
                }
            },
        };
        self.exited = Some(status);
        // The reader thread ends at end of file, which comes with the exit.
        (status, self.lines.iter().collect())
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = Command::new("kill").args(["-s", "KILL", &self.pid.to_string()]).status();
        }
    }
}

#[test]
fn ten_thousand_concurrent_connections_on_one_thread() {
    if std::env::var_os(CLIENT_MODE).is_some() {
        return; // in the client process, only `client_process` runs
    }
    let connections = fit(wanted());
    let real = std::time::Instant::now();
    let open = Cell::new(0usize);
    let most_open = Cell::new(0usize);
    let answered = Cell::new(0usize);
    let closed = Cell::new(0usize);
    let all_open = Event::new();
    let all_closed = Event::new();
    let mut clients = None;
    let result = hatchery::run(fail_after(DEADLINE, async {
        let listener = listener();
        let addr = listener.local_addr()?;
        let clients = clients.insert(Clients::spawn(addr, connections));
        let handler = async |conn: TcpStream| {
            // "hello <i>\n"
            let mut msg = [0; 32];
            let mut len = 0;
            while !msg[..len].ends_with(b"\n") {
                let n = conn.read(&mut msg[len..]).await?;
                assert!(n > 0, "a client closed before saying hello");
                len += n;
            }
            let hello = std::str::from_utf8(&msg[..len]).ok().and_then(|m| m.strip_prefix("hello "));
            let reply = format!("hi {}", hello.expect("hello <i>"));
            open.set(open.get() + 1);
            most_open.set(most_open.get().max(open.get()));
            if open.get() == connections {
                all_open.set();
            }
            // Nobody gets an answer before everyone is connected.
            all_open.wait().await?;
            conn.write_all(reply.as_bytes()).await?;
            answered.set(answered.get() + 1);
            // Then the client closes.
            let n = conn.read(&mut msg).await?;
            assert_eq!(n, 0, "nothing after the hello");
            open.set(open.get() - 1);
            closed.set(closed.get() + 1);
            if closed.get() == connections {
                all_closed.set();
            }
            Ok::<_, Error>(())
        };
        nursery(async |n| {
            n.start(|status| serve_tcp(Listen::Listener(listener), handler, status)).await?;
            // If the client process fails, stop at once rather than at the deadline.
            n.start_soon(async {
                loop {
                    match clients.try_status() {
                        Some(status) if status.success() => return Ok(()),
                        Some(status) => {
                            return Err(Error::other(format!("the client process failed: {status}")));
                        }
                        None => sleep(Duration::from_millis(20)).await?,
                    }
                }
            });
            all_closed.wait().await?;
            n.cancel_scope().cancel();
            Ok(())
        })
        .await?;
        Ok::<_, Error>(())
    }));
    let (status, output) = clients.take().expect("the clients were started").finish();
    if let Err(e) = result {
        panic!("the server failed: {e}; client process: {status}, output: {output:?}");
    }
    assert!(status.success(), "the client process failed: {status}; output: {output:?}");
    let done = format!("clients: {connections} answers checked");
    assert!(output.iter().any(|l| l.contains(&done)), "the client process checked every answer: {output:?}");
    assert_eq!(most_open.get(), connections, "every connection was open at the same time");
    assert_eq!((answered.get(), closed.get(), open.get()), (connections, connections, 0));
    println!("scale: {connections} concurrent connections served on one thread in {:.2?}", real.elapsed());
}

/// Does nothing in a normal test run; in the client process, the clients.
#[test]
fn client_process() {
    let Ok(spec) = std::env::var(CLIENT_MODE) else { return };
    let (addr, count) = spec.split_once(' ').expect("addr count");
    let addr: SocketAddr = addr.parse().unwrap();
    let count: usize = count.parse().unwrap();
    assert_eq!(fit(count), count, "the client process fits as many connections as the server");
    // Connect a few hundred at a time, so that the server's accept queue never overflows (a
    // dropped SYN is retried only after a second); every connection then stays open until
    // its answer comes, and answers come only when all are open.
    let connecting = CapacityLimiter::new(256);
    hatchery::run(fail_after(DEADLINE, async {
        nursery(async |n| {
            for i in 0..count {
                let connecting = &connecting;
                n.start_soon(async move {
                    let conn = {
                        let _token = connecting.acquire().await?;
                        TcpStream::connect(addr).await?
                    };
                    conn.write_all(format!("hello {i}\n").as_bytes()).await?;
                    let want = format!("hi {i}\n");
                    let mut got = vec![0; want.len()];
                    let mut len = 0;
                    while len < got.len() {
                        let n = conn.read(&mut got[len..]).await?;
                        assert!(n > 0, "client {i}: the server closed before answering");
                        len += n;
                    }
                    assert_eq!(got, want.as_bytes(), "client {i}");
                    Ok::<_, Error>(())
                });
            }
            Ok(())
        })
        .await?;
        Ok::<_, Error>(())
    }))
    .unwrap();
    println!("clients: {count} answers checked");
}
