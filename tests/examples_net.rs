//! The networking examples, from the outside and from the inside.
//!
//! - **From the outside**: the example binaries (built once per test run with this test
//!   binary's profile and target directory, by `tests/support/child.rs` as for
//!   `tests/signals.rs`), driven by real clients: a Python socket client for `echo_server`,
//!   `curl` for `hello_http` (skipped, with a message, when `python3` or `curl` is missing), raw
//!   sockets, and the examples themselves (`fetch_all` against `hello_http`, `chaos_proxy` in
//!   front of `echo_server`). Every child is killed if the test fails (a guard with `Drop`);
//!   every wait is bounded.
//! - **From the inside**: `hello_http`'s protocol module (`examples/hello_http/http.rs`) is
//!   included here, so its parser is unit-tested and its connection loop runs on the virtual
//!   clock, where its deadlines fire at exact instants.
//!
//! Everything is on loopback.

#[path = "../examples/hello_http/http.rs"]
#[allow(dead_code)]
mod http;

#[path = "support/child.rs"]
mod child;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use child::{Proc, build_examples};
use hatchery::net::{TcpStream, serve_tcp};
use hatchery::{Instant, now, nursery, sleep, testing};

/// The longest a socket operation or a program run to completion may take before the test fails
/// (waits on a running example: [`child::PATIENCE`]).
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Child processes

/// The directory of the example binaries, built once per test run.
fn examples_dir() -> PathBuf {
    build_examples(&["echo_server", "chat_server", "hello_http", "fetch_all", "chaos_proxy"])
}

/// Whether `program` can be run (for the tests that need `python3` or `curl`).
fn available(program: &str) -> bool {
    let found =
        Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        eprintln!("SKIPPED: `{program}` is not installed; this test needs it");
    }
    found
}

/// Starts a server example on a free port; returns it and the address from its first line.
fn server(name: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let mut p =
        Proc::spawn(Command::new(examples_dir().join(name)).args(args).args(["--addr", "127.0.0.1:0"]));
    let addr = p.listening_addr();
    (p, addr)
}

/// Runs a program to completion (bounded); its status and stdout.
fn run_program(cmd: &mut Command) -> (ExitStatus, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the program starts");
    let mut stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send((child.wait(), out));
    });
    match rx.recv_timeout(PATIENCE) {
        Ok((status, out)) => (status.unwrap(), out),
        Err(_) => {
            let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
            panic!("{cmd:?} did not finish within {PATIENCE:?}");
        }
    }
}

/// A blocking loopback client with a read timeout.
fn connect(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect_timeout(&addr, PATIENCE).expect("connects");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads one HTTP response (head and `Content-Length` body) from `r`.
fn read_response(r: &mut impl BufRead) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).expect("reads the head") > 0, "end of stream in a head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).expect("a Content-Length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("reads the body");
    (head, String::from_utf8(body).unwrap())
}

/// The value of header `name` in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Asserts that the peer closed the connection (end of stream, nothing more).
fn assert_eof(r: &mut impl Read) {
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("reads to the end");
    assert!(rest.is_empty(), "nothing after the last response, got {:?}", String::from_utf8_lossy(&rest));
}

// ---------------------------------------------------------------------------------------------
// echo_server

const PYTHON_ECHO_CLIENT: &str = r#"
import random, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
socks = [socket.create_connection((host, port), timeout=20) for _ in range(n)]
payloads = [rnd.randbytes(rnd.randint(1, 16384)) for _ in range(n)]
for s, p in zip(socks, payloads):  # every connection is open at once
    s.sendall(p)
total = 0
for i, (s, p) in enumerate(zip(socks, payloads)):
    got = bytearray()
    while len(got) < len(p):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"connection {i}: end of stream after {len(got)} of {len(p)} bytes")
        got += chunk
    if bytes(got) != p:
        sys.exit(f"connection {i}: the echo differs")
    total += len(p)
    s.close()
print("ok", n, total)
"#;

#[test]
fn echo_server_echoes_to_python_clients_and_stops_on_ctrl_c() {
    if !available("python3") {
        return;
    }
    let (mut server, addr) = server("echo_server", &[]);
    let (status, out) = run_program(Command::new("python3").args([
        "-c",
        PYTHON_ECHO_CLIENT,
        &addr.ip().to_string(),
        &addr.port().to_string(),
        "20",
    ]));
    assert!(status.success(), "the Python client failed: {out}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields[..2], ["ok", "20"], "{out}");
    let total: u64 = fields[2].parse().unwrap();
    // The server logs every connection, and every clean close (it sees each client's end of
    // stream); wait for all of them before stopping it.
    let mut closed = 0;
    while closed < 20 {
        closed += usize::from(server.next_line().contains(": closed after "));
    }
    let out = server.interrupt_and_finish();
    assert_eq!(out.iter().filter(|l| l.contains(": connected (")).count(), 20, "{out:?}");
    assert_eq!(
        out.last().map(String::as_str),
        Some(format!("shutting down (signal 2): served 20 connection(s), echoed {total} byte(s)").as_str()),
        "{out:?}"
    );
}

/// A client that sends everything and shuts down its side at once (data and FIN arrive
/// together) must still get everything back, then the end of stream (this once hung: a short
/// read hid the FIN queued behind the data).
#[test]
fn echo_server_answers_a_client_that_half_closes_at_once() {
    let (server, addr) = server("echo_server", &["--quiet"]);
    let mut c = connect(addr);
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&payload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("the echo, then end of stream");
    assert!(back == payload);
    server.interrupt_and_finish();
}

// ---------------------------------------------------------------------------------------------
// hello_http, from the outside

#[test]
fn hello_http_answers_curl_and_reuses_the_connection() {
    if !available("curl") {
        return;
    }
    let (server, addr) = server("hello_http", &[]);
    let base = format!("http://{addr}");
    // Two URLs in one curl run: HTTP/1.1 keeps the connection, so the second makes no new one.
    let (status, out) = run_program(Command::new("curl").args([
        "--silent",
        "--show-error",
        "--write-out",
        "\n%{http_code} %{num_connects}\n",
        &format!("{base}/"),
        &format!("{base}/W%C3%B6rld"),
    ]));
    assert!(status.success(), "{out}");
    assert_eq!(out, "Hello, Anonymous!\n200 1\nHello, Wörld!\n200 0\n");

    // HTTP/1.0 closes after each response, so each URL needs a connection of its own.
    let (status, out) = run_program(Command::new("curl").args([
        "--silent",
        "--http1.0",
        "--write-out",
        "\n%{http_code} %{num_connects}\n",
        &format!("{base}/a"),
        &format!("{base}/b"),
    ]));
    assert!(status.success(), "{out}");
    assert_eq!(out, "Hello, a!\n200 1\nHello, b!\n200 1\n");

    // HEAD: the same headers, Content-Length included, and no body.
    let (status, out) =
        run_program(Command::new("curl").args(["--silent", "--head", &format!("{base}/you")]));
    assert!(status.success(), "{out}");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(header(&out, "content-length"), Some("11"), "{out}");
    assert_eq!(header(&out, "content-type"), Some("text/plain; charset=utf-8"), "{out}");
    assert!(header(&out, "date").is_some_and(|d| d.ends_with(" GMT") && d.len() == 29), "{out}");

    // Other methods and deeper paths.
    let (_, out) = run_program(Command::new("curl").args([
        "--silent",
        "--include",
        "--data",
        "x=1",
        &format!("{base}/"),
    ]));
    assert!(out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{out}");
    assert_eq!(header(&out, "allow"), Some("GET, HEAD"), "{out}");
    let (_, out) = run_program(Command::new("curl").args(["--silent", "--include", &format!("{base}/a/b")]));
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");

    server.interrupt_and_finish();
}

#[test]
fn hello_http_refuses_malformed_requests_with_400_and_closes() {
    let (server, addr) = server("hello_http", &[]);
    for (request, reason) in [
        ("GARBAGE\r\n\r\n", "malformed request line"),
        ("GET / HTTP/1.1\r\n\r\n", "an HTTP/1.1 request needs exactly one Host header"),
        ("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", "invalid header name"),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", "invalid Content-Length"),
        ("GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", "invalid percent-encoding in the path"),
    ] {
        let mut c = BufReader::new(connect(addr));
        c.get_mut().write_all(request.as_bytes()).unwrap();
        let (head, body) = read_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{request:?}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        assert_eq!(body, format!("400 Bad Request: {reason}\n"));
        assert_eq!(header(&head, "content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(header(&head, "content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(header(&head, "date").map(str::len), Some(29));
        assert_eq!(header(&head, "date").map(|d| d.ends_with(" GMT")), Some(true));
        assert_eq!(head.lines().filter(|l| !l.is_empty()).count(), 5, "status line and four headers: {head}");
        assert_eq!(body.len(), 17 + reason.len() + 1);
        assert_eq!(c.buffer().len(), 0);
        assert_eof(&mut c);
    }
    server.interrupt_and_finish();
}

#[test]
fn hello_http_pipelines_and_keeps_the_connection_after_404_and_405() {
    let (server, addr) = server("hello_http", &[]);
    let mut c = BufReader::new(connect(addr));
    // Three requests in one write, one of them with a body to skip; then the server's answers,
    // in order, on the same connection.
    c.get_mut()
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              GET /three/four HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
    let (head, body) = read_response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "Hello, one!");
    let (head, _) = read_response(&mut c);
    assert!(head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{head}");
    let (head, _) = read_response(&mut c);
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert_eq!(header(&head, "connection"), None, "still open");
    // Still open; `Connection: close` is honoured.
    c.get_mut().write_all(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut c);
    assert_eq!(body, "Hello, last!");
    assert_eq!(header(&head, "connection"), Some("close"));
    assert_eof(&mut c);
    server.interrupt_and_finish();
}

// ---------------------------------------------------------------------------------------------
// hello_http, from the inside: the parser

fn parsed(head: &str) -> http::Request<'_> {
    match http::parse_request(head.as_bytes()) {
        http::Parse::Complete(req, len) => {
            assert_eq!(len, head.len(), "the whole head is used");
            req
        }
        other => panic!("{head:?}: {other:?}"),
    }
}

fn rejected(head: &str) -> http::Reject {
    match http::parse_request(head.as_bytes()) {
        http::Parse::Invalid(reject) => reject,
        other => panic!("{head:?} should be refused: {other:?}"),
    }
}

#[test]
fn the_parser_reads_request_heads() {
    let req = parsed("GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n");
    assert_eq!(req.method, b"GET");
    assert_eq!(req.target, b"/x?y=1");
    assert_eq!(req.version, http::Version::Http11);
    assert!(req.keep_alive);
    assert_eq!(req.content_length, 0);

    // Empty lines before the request line are skipped; bare LF ends lines too; header names
    // are case-insensitive and values are trimmed.
    let req =
        parsed("\r\n\nPOST / HTTP/1.1\nhOsT: a\nCONTENT-LENGTH:  12 \nConnection: Keep-Alive, CLOSE\n\n");
    assert_eq!((req.method, req.content_length, req.keep_alive), (&b"POST"[..], 12, false));

    // HTTP/1.0: no Host needed; closes unless asked to keep alive.
    assert!(!parsed("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    // The same Content-Length twice is fine.
    assert_eq!(
        parsed("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").content_length,
        3
    );

    // Incomplete heads wait for more bytes.
    for partial in
        ["", "GET", "GET / HTTP/1.1", "GET / HTTP/1.1\r\nHost: a\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r"]
    {
        assert_eq!(http::parse_request(partial.as_bytes()), http::Parse::Partial, "{partial:?}");
    }
}

#[test]
fn the_parser_refuses_malformed_heads_with_the_right_status() {
    use http::Reject::*;
    let bad = |reason| BadRequest(reason);
    assert_eq!(rejected("GET /\r\n\r\n"), bad("malformed request line"));
    assert_eq!(rejected("GET  / HTTP/1.1\r\n\r\n"), bad("malformed request line"));
    // A bad request line is refused as soon as it is complete, before the rest arrives.
    assert_eq!(rejected("G(T / HTTP/1.1\r\n"), bad("invalid method"));
    assert_eq!(rejected("GET /\x01 HTTP/1.1\r\n"), bad("invalid request target"));
    assert_eq!(rejected("GET / HTTP/1.1x\r\n"), bad("invalid HTTP version"));
    assert_eq!(rejected("GET / http/1.1\r\n"), bad("invalid HTTP version"));
    assert_eq!(rejected("GET / HTTP/2.0\r\n"), VersionNotSupported);
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
        bad("obsolete line folding in the header")
    );
    assert_eq!(rejected("GET / HTTP/1.1\r\nHost a\r\n\r\n"), bad("header line without a colon"));
    assert_eq!(rejected("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), bad("invalid header name"));
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n"),
        bad("invalid character in a header value")
    );
    assert_eq!(rejected("GET / HTTP/1.1\r\n\r\n"), bad("an HTTP/1.1 request needs exactly one Host header"));
    assert_eq!(
        rejected("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        bad("an HTTP/1.1 request needs exactly one Host header")
    );
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
        bad("invalid Content-Length")
    );
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"),
        bad("invalid Content-Length")
    );
    assert_eq!(
        rejected("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        bad("conflicting Content-Length headers")
    );
    assert!(matches!(
        rejected("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
        NotImplemented(_)
    ));
    assert_eq!(rejected("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n"), BodyTooLarge);
    assert_eq!(
        parsed("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n").content_length,
        1 << 20
    );

    // Too big: too many header fields, or no end of head within MAX_HEAD bytes.
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: y\r\n".repeat(http::MAX_HEADERS));
    assert_eq!(rejected(&many), HeadTooLarge);
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "y".repeat(http::MAX_HEAD));
    assert_eq!(rejected(&long), HeadTooLarge);
    let almost = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "y".repeat(http::MAX_HEAD - 40));
    assert_eq!(http::parse_request(almost.as_bytes()), http::Parse::Partial);
}

#[test]
fn routes_greet_by_name() {
    let mut name = Vec::new();
    let mut greet = |method: &str, target: &str| {
        let route = http::route(method.as_bytes(), target.as_bytes(), &mut name);
        (route, String::from_utf8_lossy(&name).into_owned())
    };
    assert_eq!(greet("GET", "/"), (http::Route::Hello, "Anonymous".into()));
    assert_eq!(greet("HEAD", "/?q=1"), (http::Route::Hello, "Anonymous".into()));
    assert_eq!(greet("GET", "/World"), (http::Route::Hello, "World".into()));
    assert_eq!(greet("GET", "/W%C3%B6rld%21?x#y"), (http::Route::Hello, "Wörld!".into()));
    assert_eq!(greet("GET", "http://example.com/Proxy"), (http::Route::Hello, "Proxy".into()));
    assert_eq!(greet("GET", "HTTP://example.com").0, http::Route::Hello);
    assert_eq!(greet("GET", "/a/b").0, http::Route::NotFound);
    assert_eq!(greet("GET", "/a/").0, http::Route::NotFound);
    assert_eq!(greet("POST", "/a").0, http::Route::MethodNotAllowed);
    assert_eq!(greet("get", "/a").0, http::Route::MethodNotAllowed, "methods are case-sensitive");
    assert_eq!(greet("GET", "*").0, http::Route::BadRequest("the request target must be a path"));
    assert_eq!(greet("GET", "/%4").0, http::Route::BadRequest("invalid percent-encoding in the path"));
    assert_eq!(greet("GET", "/%ff").0, http::Route::BadRequest("the name is not UTF-8"));
}

#[test]
fn process_answers_pipelined_requests_in_order() {
    let date = *b"Sun, 06 Nov 1994 08:49:37 GMT";
    let mut session = http::Session::default();
    let mut out = Vec::new();
    let input = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyzGET /c HT";
    let progress = http::process(&mut session, input, &mut out, &date);
    let used = input.len() - "GET /c HT".len();
    assert_eq!(progress, http::Progress { used, answered: 2, next: http::Next::Read });
    let expected = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\
                    Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nHello, a!\
                    HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\
                    Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n";
    assert_eq!(String::from_utf8_lossy(&out), expected);

    // A body split across reads is skipped across calls.
    out.clear();
    let progress = http::process(
        &mut session,
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab",
        &mut out,
        &date,
    );
    assert_eq!((progress.answered, progress.next, session.skip), (1, http::Next::Read, 2));
    out.clear();
    let rest = b"cdGET /z HTTP/1.0\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n";
    let progress = http::process(&mut session, rest, &mut out, &date);
    // HTTP/1.0 without keep-alive: the answer says so, and the request after it is ignored.
    assert_eq!(progress, http::Progress { used: rest.len(), answered: 1, next: http::Next::Close });
    let text = String::from_utf8_lossy(&out);
    assert!(text.ends_with("Connection: close\r\n\r\nHello, z!"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1);
}

#[test]
fn http_dates_are_imf_fixdates() {
    let date = |secs| String::from_utf8(http::http_date(secs).to_vec()).unwrap();
    assert_eq!(date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT"); // RFC 9110's example
    assert_eq!(date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_eq!(date(4_102_444_800), "Fri, 01 Jan 2100 00:00:00 GMT");
}

// ---------------------------------------------------------------------------------------------
// hello_http, from the inside: the connection loop on the virtual clock

fn at(secs: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

/// Reads one response, a byte at a time, then checks for the end of stream if `then_eof`.
///
/// A byte at a time because of the bug described at
/// `echo_server_answers_a_client_that_half_closes_at_once`: a read that fills its buffer
/// leaves the socket's readiness set, so the read that finds the end of stream does not wait
/// for an edge that the already-queued FIN will never produce.
async fn response(conn: &TcpStream, then_eof: bool) -> io::Result<String> {
    let mut text = Vec::new();
    let mut byte = [0];
    while !text.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).await?, 1, "end of stream inside a head: {text:?}");
        text.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&text).into_owned();
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    for _ in 0..len {
        assert_eq!(conn.read(&mut byte).await?, 1);
        text.push(byte[0]);
    }
    if then_eof {
        assert_eq!(conn.read(&mut byte).await?, 0, "end of stream after the response");
    }
    Ok(String::from_utf8(text).unwrap())
}

/// Runs `client` against `serve_connection` (default deadlines) on the virtual clock.
fn with_hello_server(client: impl AsyncFnOnce(SocketAddr) -> io::Result<()>) {
    let config = http::Config::default();
    let date = http::DateCache::new();
    testing::run(async {
        nursery(async |n| {
            let handler = async |conn: TcpStream| http::serve_connection(&conn, &config, &date).await;
            let addr = n.start(|status| serve_tcp(([127, 0, 0, 1], 0), handler, status)).await?;
            client(addr).await?;
            n.cancel_scope().cancel();
            Ok(())
        })
        .await
        .map_err(io::Error::from)?;
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn an_idle_connection_closes_after_the_idle_timeout_and_keep_alive_restarts_it() {
    with_hello_server(async |addr| {
        let conn = TcpStream::connect(addr).await?;
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await?;
        assert!(response(&conn, false).await?.ends_with("\r\n\r\nHello, x!"));
        assert_eq!(now(), at(0));
        // 14 s of silence is within the 15 s idle timeout; each request restarts it.
        sleep(Duration::from_secs(14)).await?;
        conn.write_all(b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n").await?;
        assert!(response(&conn, false).await?.ends_with("\r\n\r\nHello, y!"));
        let mut byte = [0];
        assert_eq!(conn.read(&mut byte).await?, 0, "closed when idle");
        assert_eq!(now(), at(14 + 15));
        Ok(())
    });
}

#[test]
fn a_request_that_arrives_too_slowly_gets_408_at_the_request_timeout() {
    with_hello_server(async |addr| {
        let conn = TcpStream::connect(addr).await?;
        sleep(Duration::from_secs(3)).await?;
        conn.write_all(b"GET / HTTP/1.1\r\n").await?; // the request starts at 3 s...
        sleep(Duration::from_secs(5)).await?;
        conn.write_all(b"Host: h\r\n").await?; // ...trickles...
        let text = response(&conn, true).await?; // ...and 10 s after its first byte, it is too late
        assert_eq!(now(), at(3 + 10));
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// chat_server

/// A chat client: lines in, lines out.
struct ChatClient {
    reader: BufReader<std::net::TcpStream>,
}

impl ChatClient {
    fn connect(addr: SocketAddr) -> ChatClient {
        ChatClient { reader: BufReader::new(connect(addr)) }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).expect("a line from the server") > 0, "end of stream");
        assert!(line.ends_with('\n'));
        line.pop();
        line
    }

    fn say(&mut self, text: &str) {
        self.reader.get_mut().write_all(format!("{text}\n").as_bytes()).unwrap();
    }
}

#[test]
fn chat_server_broadcasts_and_drops_a_client_that_does_not_read() {
    let (mut server, addr) = server("chat_server", &["--outbox", "4"]);
    let mut alice = ChatClient::connect(addr);
    assert_eq!(alice.line(), "* welcome, guest-1; 0 other(s) here");
    let mut bob = ChatClient::connect(addr);
    assert_eq!(bob.line(), "* welcome, guest-2; 1 other(s) here");
    assert_eq!(alice.line(), "* guest-2 joined");
    bob.say("hello, everyone\r");
    assert_eq!(alice.line(), "guest-2: hello, everyone");
    assert_eq!(bob.line(), "guest-2: hello, everyone");

    // Carol connects and never reads.
    let carol = connect(addr);
    assert_eq!(alice.line(), "* guest-3 joined");
    assert_eq!(bob.line(), "* guest-3 joined");

    // Bob talks a lot, in lock step with Alice and himself reading every line, so they keep up.
    // Carol's socket buffers fill, then her outbox (4 messages); then she is dropped, and
    // nobody else is.
    let long = "x".repeat(4000);
    let expected = format!("guest-2: {long}");
    let dropped = "* guest-3 was disconnected (too slow)";
    let mut rounds = 0;
    let mut notices = 0;
    while notices < 2 {
        rounds += 1;
        assert!(rounds <= 5000, "carol was never dropped");
        bob.say(&long);
        for reader in [&mut alice, &mut bob] {
            loop {
                let line = reader.line();
                if line == dropped {
                    notices += 1;
                    continue;
                }
                assert_eq!(line, expected);
                break;
            }
        }
    }
    server.expect_line("guest-3: disconnected (too slow)");

    // Carol gets what was in her socket, then the end: her connection was closed.
    let mut carol = BufReader::new(carol);
    let mut first = String::new();
    carol.read_line(&mut first).unwrap();
    assert_eq!(first, "* welcome, guest-3; 2 other(s) here\n");
    let mut rest = Vec::new();
    match carol.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(rest.len() < rounds * (expected.len() + 1), "she did not get everything");

    // The room goes on: a newcomer sees two others, and leaving is announced.
    let mut dave = ChatClient::connect(addr);
    assert_eq!(dave.line(), "* welcome, guest-4; 2 other(s) here");
    assert_eq!(alice.line(), "* guest-4 joined");
    drop(bob);
    assert_eq!(alice.line(), "* guest-2 left");
    assert_eq!(dave.line(), "* guest-2 left");
    server.interrupt_and_finish();
}

// ---------------------------------------------------------------------------------------------
// fetch_all

fn fetch_all(args: &[&str]) -> String {
    let (status, out) = run_program(Command::new(examples_dir().join("fetch_all")).args(args));
    assert!(status.success(), "fetch_all {args:?} failed: {out}");
    out.lines().last().expect("a summary line").to_string()
}

/// The summary without its timing: `N requests: ... unfinished`.
fn without_time(summary: &str) -> String {
    let (count, rest) = summary.split_once(" requests in ").expect("a summary line");
    let (_, counts) = rest.split_once(": ").expect("a summary line");
    format!("{count} requests: {counts}")
}

#[test]
fn fetch_all_counts_successes_and_per_request_timeouts() {
    // The stalled requests take the whole second; the others take milliseconds.
    let summary = fetch_all(&["--n", "40", "--stall", "3", "--timeout", "1s", "--concurrency", "8"]);
    assert_eq!(without_time(&summary), "40 requests: 37 ok, 3 timed out, 0 failed, 0 unfinished");
}

#[test]
fn fetch_all_stops_everything_at_the_overall_deadline() {
    // Every request stalls; 4 at a time; each would time out after 10 s, but the whole run
    // stops after 400 ms: 4 in flight and 16 waiting are unfinished.
    let summary = fetch_all(&[
        "--n",
        "20",
        "--stall",
        "20",
        "--timeout",
        "10s",
        "--deadline",
        "400ms",
        "--concurrency",
        "4",
    ]);
    assert_eq!(without_time(&summary), "20 requests: 0 ok, 0 timed out, 0 failed, 20 unfinished");
}

#[test]
fn fetch_all_against_the_hello_http_binary() {
    let (server, addr) = server("hello_http", &[]);
    let url = format!("http://{addr}");
    let summary = fetch_all(&["--url-base", &url, "--n", "200", "--concurrency", "50", "--timeout", "10s"]);
    assert_eq!(without_time(&summary), "200 requests: 200 ok, 0 timed out, 0 failed, 0 unfinished");
    // A name instead of an address: resolved by connect_tcp.
    let summary = fetch_all(&["--url-base", &format!("http://localhost:{}", addr.port()), "--n", "5"]);
    assert_eq!(without_time(&summary), "5 requests: 5 ok, 0 timed out, 0 failed, 0 unfinished");
    server.interrupt_and_finish();
}

// ---------------------------------------------------------------------------------------------
// chaos_proxy

#[test]
fn chaos_proxy_closes_each_connection_after_the_bytes_its_seed_says() {
    let (echo, echo_addr) = server("echo_server", &["--quiet"]);
    let mut proxy = Proc::spawn(Command::new(examples_dir().join("chaos_proxy")).args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &echo_addr.to_string(),
        "--seed",
        "11",
        "--slice",
        "64",
        "--delay",
        "1ms",
        "--close",
        "100",
        "--fault-bytes",
        "5000",
    ]));
    let addr = proxy.listening_addr();
    // The same plan, computed here from the seed: connection i closes after plan(i) bytes.
    let config = hatchery::testing::chaos::Config::new().seed(11).close(100).fault_within(5000);
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
    for index in 0..3 {
        let fault = config.plan(index).fault().expect("every connection gets a fault");
        assert_eq!(fault.kind(), hatchery::testing::chaos::FaultKind::Close);
        let mut c = connect(addr);
        c.write_all(&payload).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("a clean end of stream");
        assert_eq!(back.len() as u64, fault.after(), "connection {index}");
        assert!(back == payload[..back.len()], "a prefix of what was sent");
        proxy.expect_line(&format!("#{index}: close after {} byte(s): striking", fault.after()));
    }
    let out = proxy.interrupt_and_finish();
    let totals = out.last().unwrap();
    assert!(totals.starts_with("3 connection(s) (0 active)"), "{totals}");
    assert!(totals.contains("faults: 0 reset, 0 hang, 3 close"), "{totals}");
    echo.interrupt_and_finish();
}
