//! A guided tour of hatchery, one short section per idea: nurseries, the `start` handshake,
//! cancel scopes and deadlines, error propagation, virtual time, channels, networking, the
//! task-tree dump, and a chaos proxy for testing network code.
//!
//! Each section is a plain function that starts its own `hatchery::run`, so sections are
//! independent and new ones slot into the list in `main`. The whole tour takes well under
//! three seconds of real time: the section that waits for minutes uses the virtual clock.
//!
//! ```text
//! cargo run --example tour
//! ```

use std::cell::Cell;
use std::net::Shutdown;
use std::time::Duration;

use hatchery::io::BufReader;
use hatchery::net::{TcpStream, serve_tcp};
use hatchery::testing::MockClock;
use hatchery::testing::chaos::{ChaosProxy, Config};
use hatchery::{
    Builder, CancelScope, Error, TaskStatus, fail_after, move_on_after, nursery, sleep, sleep_forever,
};

thread_local! {
    /// When the current section started (real time), for the log lines.
    static SECTION_START: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Prints a line stamped with the real time since the section started.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("  [{:4.2}s] {}", section_elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

fn section_elapsed() -> Duration {
    SECTION_START.get().map_or(Duration::ZERO, |t0| t0.elapsed())
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A section of the tour: its heading, and a function that runs it in a runtime of its own.
type Section = (&'static str, fn() -> Result<(), Error>);

fn main() -> Result<(), Error> {
    let sections: [Section; 9] = [
        ("1. nurseries", nurseries),
        ("2. start handshake", start_handshake),
        ("3. cancel scopes and deadlines", cancel_scopes),
        ("4. errors propagate", errors_propagate),
        ("5. virtual time", virtual_time),
        ("6. channels that lose nothing", channels),
        ("7. networking: a server and its clients", networking),
        ("8. why is it stuck? the task tree", task_tree),
        ("9. testing network code: a chaos proxy", chaos),
    ];
    let tour_start = std::time::Instant::now();
    for (title, section) in sections {
        println!("\n{title}");
        SECTION_START.set(Some(std::time::Instant::now()));
        section()?;
    }
    println!("\nTour finished in {:.2?} of real time.", tour_start.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A nursery runs children concurrently and does not return before all of them have finished.
/// Children may borrow from the code around the nursery, and their handles give their values.
fn nurseries() -> Result<(), Error> {
    let documents = ["the quick brown fox", "jumps over", "the lazy dog"];
    hatchery::run(async {
        let words = nursery(async |n| {
            // Each child borrows its document; none of them needs to own anything.
            let handles: Vec<_> = documents
                .iter()
                .enumerate()
                .map(|(i, doc)| {
                    n.spawn(async move {
                        sleep(ms(100) * (3 - i as u32)).await?; // pretend to download it
                        say!("child {i}: counted {doc:?}");
                        Ok(doc.split_whitespace().count())
                    })
                })
                .collect();
            let mut words = 0;
            for handle in handles {
                words += handle.await?;
            }
            Ok(words)
        })
        .await?
        // `None` would mean that the nursery's own scope was cancelled before the body could
        // produce its value; nothing cancels it here.
        .expect("nothing cancels this nursery");
        say!("{words} words; three downloads of up to 0.3 s took 0.3 s together");
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

/// A service that needs setting up before it is usable: it tells its starter when it is ready.
async fn server(port: u16, status: TaskStatus<u16>) -> Result<(), Error> {
    if port < 1024 {
        // An error before `started` goes back to the caller of `start`, not to the nursery.
        return Err(Error::other(format!("cannot bind port {port}: permission denied")));
    }
    say!("server: binding port {port}...");
    sleep(ms(100)).await?;
    status.started(port); // from here on, the task belongs to the nursery
    say!("server: listening");
    let Err(cancelled) = sleep_forever().await; // serve until cancelled
    say!("server: shutting down ({cancelled})");
    Err(cancelled.into())
}

/// `start` runs a task until it calls `status.started(value)` and returns that value: when it
/// returns, the service is ready, and it keeps running in the nursery.
fn start_handshake() -> Result<(), Error> {
    hatchery::run(async {
        nursery(async |n| {
            if let Err(e) = n.start(|status| server(80, status)).await {
                say!("start failed: {e}; the nursery carries on");
            }
            let port = n.start(|status| server(8080, status)).await?;
            say!("parent: the server is ready on port {port}");
            sleep(ms(50)).await?; // use the service
            // Done with it: cancel everything in this nursery. The nursery absorbs its own
            // cancellation, so this is a clean shutdown, not an error.
            n.cancel_scope().cancel();
            Ok(())
        })
        .await?;
        say!("parent: nursery closed");
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

async fn slow_query() -> Result<&'static str, Error> {
    sleep(Duration::from_secs(10)).await?;
    Ok("result")
}

/// Cancel scopes put a deadline (or a cancel button) on any piece of code; the scope that was
/// cancelled absorbs the cancellation. See the `timeouts` example for shields and moving
/// deadlines.
fn cancel_scopes() -> Result<(), Error> {
    hatchery::run(async {
        // Give up quietly: `None` means the deadline fired.
        let r = move_on_after(ms(100), slow_query()).await?;
        say!("move_on_after(100 ms, slow query) -> {r:?}");

        // Or treat the deadline as an error.
        match fail_after(ms(100), slow_query()).await {
            Ok(r) => say!("fail_after(100 ms, slow query) -> {r}"),
            Err(e) => say!("fail_after(100 ms, slow query) -> error: {e}"),
        }

        // A scope can also be cancelled from elsewhere through its handle: a stop button.
        let scope = CancelScope::new();
        let stop = scope.handle();
        nursery(async |n| {
            n.start_soon(async {
                sleep(ms(150)).await?;
                say!("stop button pressed");
                stop.cancel();
                Ok(())
            });
            let r = scope
                .run(async {
                    for step in 1.. {
                        sleep(ms(60)).await?;
                        say!("worker: step {step}");
                    }
                    Ok::<_, Error>(())
                })
                .await?;
            say!("worker scope -> {r:?}, cancelled_caught = {}", stop.cancelled_caught());
            Ok(())
        })
        .await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

async fn writer() -> Result<(), Error> {
    sleep(ms(100)).await?;
    say!("writer: disk full!");
    Err(Error::other("writer: disk full"))
}

async fn replica(name: &str, loses_data: bool) -> Result<(), Error> {
    let Err(cancelled) = sleep(Duration::from_secs(10)).await else {
        return Ok(());
    };
    say!("{name}: {cancelled}");
    if loses_data {
        // A real error while handling the cancellation is kept, not swallowed.
        return Err(Error::other(format!("{name}: 3 writes were not flushed")));
    }
    // The cancellation itself is absorbed by the nursery that caused it.
    Err(cancelled.into())
}

/// When a child fails, the nursery cancels its other children, waits for them, and returns
/// every real error it collected: nothing runs on unsupervised, nothing is lost.
fn errors_propagate() -> Result<(), Error> {
    hatchery::run(async {
        let outcome = nursery(async |n| {
            n.start_soon(replica("replica-a", false));
            n.start_soon(replica("replica-b", true));
            n.start_soon(writer());
            Ok(())
        })
        .await;
        match outcome {
            Ok(_) => say!("no errors?"),
            Err(errors) => {
                say!("the nursery failed with {} error(s):", errors.len());
                for e in errors.errors() {
                    say!("  - {e}");
                }
                // With `?` it becomes one `hatchery::Error`, whose message starts with the first.
                say!("as one error: {}", Error::from(errors));
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

/// A service that hangs on its first three attempts, then answers.
async fn flaky_service(attempt: u32) -> Result<&'static str, Error> {
    let latency = if attempt <= 3 { Duration::from_secs(3600) } else { Duration::from_secs(2) };
    sleep(latency).await?;
    Ok("pong")
}

/// Prints a line stamped with the virtual time, in minutes and seconds.
macro_rules! say_virtual {
    ($($arg:tt)*) => {{
        let t = hatchery::now().since_origin().as_secs();
        println!("  [virtual {:02}:{:02}] {}", t / 60, t % 60, format_args!($($arg)*))
    }};
}

/// Retries with exponential backoff: minutes of waiting, which on the virtual clock take no
/// real time at all. Tests of code like this run the same way, with exact timestamps.
fn virtual_time() -> Result<(), Error> {
    let real = std::time::Instant::now();
    let virtual_clock = MockClock::with_autojump(Duration::ZERO);
    Builder::new().clock(virtual_clock.clone()).run(async {
        let mut backoff = Duration::from_secs(60);
        for attempt in 1.. {
            match fail_after(Duration::from_secs(30), flaky_service(attempt)).await {
                Ok(reply) => {
                    say_virtual!("attempt {attempt} -> {reply:?}");
                    break;
                }
                Err(Error::TooSlow(_)) => {
                    say_virtual!("attempt {attempt} timed out; retrying in {backoff:?}")
                }
                Err(e) => return Err(e),
            }
            sleep(backoff).await?;
            backoff *= 2;
        }
        Ok(())
    })?;
    let waited = virtual_clock.now().since_origin();
    println!(
        "  {:.1} minutes of virtual time took {:.2?} of real time",
        waited.as_secs_f64() / 60.0,
        real.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Channels join tasks: a rendezvous channel (capacity 0) completes a send only when a receiver
/// takes the value, and a send that is cancelled hands its value back instead of losing it.
fn channels() -> Result<(), Error> {
    Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
        let (tx, rx) = hatchery::channel::<&'static str>(0);
        nursery(async |n| {
            n.start_soon(async move {
                for job in ["wash", "dry", "fold"] {
                    tx.send(job).await?;
                    say!("[virtual {}s] producer: {job:?} was taken", hatchery::now().as_secs_f64());
                }
                Ok(()) // dropping the last sender ends the channel
            });
            loop {
                let job = match rx.recv().await {
                    Ok(job) => job,
                    // Every sender is gone and the buffer is drained: the work is done.
                    Err(e) if e.is_end_of_channel() => break,
                    // Anything else (a cancellation, say) is not the end: pass it on.
                    Err(e) => return Err(e.into()),
                };
                say!("[virtual {}s] consumer: doing {job:?} for 2 s", hatchery::now().as_secs_f64());
                sleep(Duration::from_secs(2)).await?;
            }
            Ok::<_, Error>(())
        })
        .await?;

        // Nobody receives here: the send times out, and the value comes back in the error.
        let (tx, _rx) = hatchery::channel::<String>(0);
        let r = move_on_after(Duration::from_secs(1), async {
            tx.send("precious".to_string()).await.inspect_err(|e| {
                say!(
                    "[virtual {}s] send cancelled; the value came back: {:?}",
                    hatchery::now().as_secs_f64(),
                    e.value
                );
            })
        })
        .await;
        say!("timed out: {}", matches!(r, Ok(None)));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

/// An echo server's connection handler: sends back everything it reads. A handler's error
/// would stop the whole server (`serve_tcp` cancels every connection), so one connection's own
/// failure (a client's reset) is reported and ends only that connection; a cancellation (the
/// server shutting down) goes through.
async fn echo(conn: TcpStream, served: &Cell<u32>) -> Result<(), Error> {
    served.set(served.get() + 1);
    let mut buf = [0; 1024];
    let copied: std::io::Result<()> = async {
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // the client is done; returning closes the connection
            }
            conn.write_all(&buf[..n]).await?;
        }
    }
    .await;
    match copied {
        Err(e) if hatchery::Cancelled::from_io(&e).is_none() => {
            say!("a connection failed: {e}");
            Ok(())
        }
        r => Ok(r?),
    }
}

/// A client: sends one line, reads the echo, and says goodbye.
async fn client(name: &str, addr: std::net::SocketAddr) -> Result<(), Error> {
    let conn = TcpStream::connect(addr).await?;
    let line = format!("hello from {name}");
    conn.write_all(line.as_bytes()).await?;
    let mut echoed = vec![0; line.len()];
    BufReader::new(&conn).read_exact(&mut echoed).await?; // reads until all of it is here
    say!("{name}: the server echoed {:?}", String::from_utf8_lossy(&echoed));
    conn.shutdown(Shutdown::Write).await?;
    Ok(())
}

/// A real TCP server and its clients in one program: `serve_tcp` runs one task per connection,
/// `start` returns once it listens (with the address it got), and cancelling the nursery's scope
/// shuts everything down: the accept loop, every connection task, every socket.
fn networking() -> Result<(), Error> {
    let served = Cell::new(0); // borrowed by every connection's task: no Arc needed
    hatchery::run(async {
        nursery(async |n| {
            let handler = async |conn: TcpStream| echo(conn, &served).await;
            let addr = n.start(|status| serve_tcp(([127, 0, 0, 1], 0), handler, status)).await?;
            say!("echo server listening on {addr}");
            nursery(async |clients| {
                for name in ["alice", "bob", "carol"] {
                    clients.start_soon(client(name, addr));
                }
                Ok::<_, Error>(())
            })
            .await?;
            say!("all clients done; cancelling the server");
            n.cancel_scope().cancel();
            Ok(())
        })
        .await?;
        say!("server stopped after {} connections; its listener and sockets are closed", served.get());
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

async fn wait_for_orders(orders: &hatchery::Receiver<u32>) -> Result<(), Error> {
    let order = orders.recv().await?;
    say!("got order {order}");
    Ok(())
}

async fn update_the_books(books: &hatchery::Mutex<u32>) -> Result<(), Error> {
    *books.lock().await? += 1;
    Ok(())
}

/// When a run seems stuck, ask it what each task waits for. In a run built with
/// `track_tasks(true)`, `debug::task_tree()` lists every task under its nursery: the call that
/// spawned it, what it waits on, and the deadline that will end the wait.
fn task_tree() -> Result<(), Error> {
    let clock = MockClock::with_autojump(Duration::ZERO);
    Builder::new().clock(clock).track_tasks(true).run(async {
        let (_orders_tx, orders) = hatchery::channel::<u32>(1);
        let books = hatchery::Mutex::new(0);
        let _held = books.lock().await?; // someone forgot to let go of the books
        move_on_after(Duration::from_secs(60), async {
            nursery(async |n| {
                n.start_soon(wait_for_orders(&orders));
                n.start_soon(update_the_books(&books));
                // A watchdog: after 10 quiet seconds, print what everyone is waiting for.
                sleep(Duration::from_secs(10)).await?;
                let tree = hatchery::debug::task_tree().map_err(Error::other)?;
                for line in tree.to_string().lines() {
                    say!("{line}");
                }
                n.cancel_scope().cancel();
                Ok::<_, Error>(())
            })
            .await?;
            Ok::<_, Error>(())
        })
        .await?;
        say!("the watchdog cancelled the stuck nursery at virtual {}s", hatchery::now().as_secs_f64());
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------

/// Sends `line`, closes the sending side, and reads until the end of stream.
async fn exchange(addr: std::net::SocketAddr, line: &[u8]) -> Result<Vec<u8>, Error> {
    let conn = TcpStream::connect(addr).await?;
    conn.write_all(line).await?;
    conn.shutdown(Shutdown::Write).await?;
    let mut got = Vec::new();
    let mut buf = [0; 64];
    loop {
        match conn.read(&mut buf).await? {
            0 => return Ok(got),
            n => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Network code must cope with a network that is slow, choppy or breaks. `ChaosProxy`, from the
/// testing kit, sits between a client and a server and slices, delays and cuts the traffic. It
/// is reproducible: each connection's fault is a function of the seed and the connection's
/// number, so a test knows in advance what each connection will meet.
fn chaos() -> Result<(), Error> {
    // Pieces of at most 4 bytes, each delayed up to 5 ms; half the connections closed early,
    // after 0 to 12 bytes of the answer.
    let config = Config::new().seed(7).slice(4).delay(ms(5)).close(50).fault_within(12);
    let plans: Vec<_> = (0..4).map(|i| config.plan(i)).collect();
    hatchery::run(async {
        let echo = async |conn: TcpStream| {
            let mut buf = [0; 64];
            // The proxy may hang up on the server mid-answer: that ends this connection only.
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                if conn.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Ok::<_, Error>(())
        };
        let listener = hatchery::net::TcpListener::bind(([127, 0, 0, 1], 0))?;
        let proxy = ChaosProxy::new(listener.local_addr()?, config).map_err(Error::other)?;
        nursery(async |n| {
            n.start(|status| serve_tcp(listener, echo, status)).await?;
            let addr = n.start(|status| proxy.serve(([127, 0, 0, 1], 0), status)).await?;
            for plan in &plans {
                let got = exchange(addr, b"hello through chaos").await?;
                let got = String::from_utf8_lossy(&got);
                match plan.fault() {
                    Some(fault) => say!("connection {}: {fault} as planned: {got:?}", plan.index()),
                    None => say!("connection {}: sliced and delayed, but whole: {got:?}", plan.index()),
                }
            }
            n.cancel_scope().cancel();
            Ok::<_, Error>(())
        })
        .await?;
        say!("proxy: {}", proxy.statistics());
        Ok(())
    })
}
