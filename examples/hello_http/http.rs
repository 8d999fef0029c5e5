//! The HTTP/1.1 side of `hello_http`: a request parser and a response writer that are pure
//! functions over byte buffers (unit-tested in `tests/examples_net.rs`, which includes this
//! file), and the per-connection loop that drives them over a [`TcpStream`].
//!
//! Scope: enough HTTP/1.1 to be a correct, fast origin server for two routes (RFC 9110 and
//! 9112): persistent connections, pipelining, `Content-Length` bodies (read and discarded),
//! strict parsing with a precise status for each problem, and deadlines for slow clients. Not
//! handled: chunked request bodies (`Transfer-Encoding` gets `501`), `Expect: 100-continue`
//! (the client sends its body after a short wait anyway), HTTP/2.

use std::cell::Cell;
use std::io::{self, Write as _};
use std::net::Shutdown;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hatchery::net::TcpStream;
use hatchery::{CancelScope, Instant, move_on_after, now};

/// Longest request head (request line and header fields) accepted: `431` beyond.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in one request: `431` beyond.
pub(crate) const MAX_HEADERS: usize = 64;
/// Largest request body accepted (it is read and discarded): `413` beyond.
pub(crate) const MAX_BODY: u64 = 1 << 20;
/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// after the server's last response, so that the response is not destroyed by a reset.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// `HTTP/1.0`: the connection closes after the response unless the client asks for
    /// `Connection: keep-alive`.
    Http10,
    /// `HTTP/1.1`: persistent unless either side says `Connection: close`.
    Http11,
}

/// A parsed request head. Borrows from the input buffer: parsing allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    /// The method, as sent (methods are case-sensitive).
    pub(crate) method: &'a [u8],
    /// The request target, as sent.
    pub(crate) target: &'a [u8],
    /// The protocol version.
    pub(crate) version: Version,
    /// Whether the connection stays open after the response.
    pub(crate) keep_alive: bool,
    /// Body bytes that follow the head (to be skipped).
    pub(crate) content_length: u64,
}

/// Why a request head is refused; each maps to one status code. The connection is closed
/// after the response: the server can no longer tell where the next request would start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// `400 Bad Request`, with the reason shown in the body.
    BadRequest(&'static str),
    /// `413 Content Too Large`: a body beyond [`MAX_BODY`].
    BodyTooLarge,
    /// `431 Request Header Fields Too Large`: a head beyond [`MAX_HEAD`] or [`MAX_HEADERS`].
    HeadTooLarge,
    /// `501 Not Implemented`, with the reason.
    NotImplemented(&'static str),
    /// `505 HTTP Version Not Supported`: a well-formed version other than 1.0 and 1.1.
    VersionNotSupported,
}

/// The result of [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parse<'a> {
    /// No complete head yet, and nothing wrong in what has arrived: read more.
    Partial,
    /// A complete head, `len` bytes long (including the blank line that ends it).
    Complete(Request<'a>, usize),
    /// The head is malformed (found as soon as the faulty line is complete).
    Invalid(Reject),
}

/// Parses the request head at the start of `buf` (RFC 9112 sections 2 to 6, strictly).
///
/// Lines end with CRLF or a bare LF; empty lines before the request line are skipped. The
/// request line must be `METHOD SP TARGET SP HTTP/x.y`; header fields `name: value` with a
/// token name, no space before the colon and no line folding. It looks at `Host` (HTTP/1.1
/// needs exactly one), `Content-Length` (digits; repeated only with the same value),
/// `Transfer-Encoding` (refused) and `Connection` (`close`, `keep-alive`).
pub(crate) fn parse_request(buf: &[u8]) -> Parse<'_> {
    let mut lines = Lines { buf, pos: 0 };
    let request_line = loop {
        match lines.next() {
            None => return lines.incomplete(),
            Some([]) => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Invalid(Reject::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Parse::Invalid(Reject::BadRequest("invalid method"));
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Parse::Invalid(Reject::BadRequest("invalid request target"));
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Parse::Invalid(Reject::VersionNotSupported);
        }
        _ => return Parse::Invalid(Reject::BadRequest("invalid HTTP version")),
    };

    let mut fields = 0;
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let (mut close, mut keep_alive) = (false, false);
    loop {
        let Some(line) = lines.next() else { return lines.incomplete() };
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Parse::Invalid(Reject::HeadTooLarge);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Parse::Invalid(Reject::BadRequest("obsolete line folding in the header"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parse::Invalid(Reject::BadRequest("header line without a colon"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Parse::Invalid(Reject::BadRequest("invalid header name"));
        }
        let value = trim_ows(&line[colon + 1..]);
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Parse::Invalid(Reject::BadRequest("invalid character in a header value"));
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_decimal(value) else {
                return Parse::Invalid(Reject::BadRequest("invalid Content-Length"));
            };
            if content_length.is_some_and(|m| m != n) {
                return Parse::Invalid(Reject::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if lines.pos > MAX_HEAD {
        return Parse::Invalid(Reject::HeadTooLarge);
    }
    if transfer_encoding {
        return Parse::Invalid(Reject::NotImplemented(
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    if hosts > 1 || (version == Version::Http11 && hosts == 0) {
        return Parse::Invalid(Reject::BadRequest("an HTTP/1.1 request needs exactly one Host header"));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Parse::Invalid(Reject::BodyTooLarge);
    }
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    Parse::Complete(Request { method, target, version, keep_alive, content_length }, lines.pos)
}

/// Lines of a request head: CRLF or LF terminated; the last, unterminated piece is not a line.
struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n')?;
        self.pos += end + 1;
        let line = &rest[..end];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    /// No blank line yet: wait for more, unless the head is already too long.
    fn incomplete(&self) -> Parse<'a> {
        if self.buf.len() >= MAX_HEAD { Parse::Invalid(Reject::HeadTooLarge) } else { Parse::Partial }
    }
}

/// RFC 9110's `tchar`: the characters of a token (methods, header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strips optional whitespace (spaces and tabs) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT` as a `u64`; `None` if empty, not all digits, or too large.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
    })
}

// ---------------------------------------------------------------------------------------------
// Routing

/// What a well-formed request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `200`: `Hello, {name}!`, the name having been written to the caller's buffer.
    Hello,
    /// `404`: a path with more than one segment.
    NotFound,
    /// `405`: a method other than GET and HEAD.
    MethodNotAllowed,
    /// `400`: a target that is not a path, or a name that does not decode.
    BadRequest(&'static str),
}

/// The two routes of aiohttp's example: `GET /` greets "Anonymous" (aiohttp's default for a
/// missing name) and `GET /{name}` greets the percent-decoded name (UTF-8). The query string is
/// ignored; an absolute-form target (`http://host/path`, as sent to proxies) is accepted, as
/// RFC 9112 asks of servers. Writes the name into `name` (cleared first).
pub(crate) fn route(method: &[u8], target: &[u8], name: &mut Vec<u8>) -> Route {
    if method != b"GET" && method != b"HEAD" {
        return Route::MethodNotAllowed;
    }
    let path = if target.starts_with(b"/") {
        target
    } else if let Some(after_scheme) = strip_scheme(target) {
        after_scheme.iter().position(|&b| b == b'/').map_or(&b"/"[..], |i| &after_scheme[i..])
    } else {
        return Route::BadRequest("the request target must be a path");
    };
    let path = path.split(|&b| b == b'?' || b == b'#').next().unwrap_or(path);
    name.clear();
    let segment = &path[1..];
    if segment.is_empty() {
        name.extend_from_slice(b"Anonymous");
        return Route::Hello;
    }
    if segment.contains(&b'/') {
        return Route::NotFound;
    }
    if !percent_decode(segment, name) {
        return Route::BadRequest("invalid percent-encoding in the path");
    }
    if std::str::from_utf8(name).is_err() {
        return Route::BadRequest("the name is not UTF-8");
    }
    Route::Hello
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

/// Appends the percent-decoding of `s` to `out`; false on a malformed escape.
fn percent_decode(s: &[u8], out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (Some(hi), Some(lo)) =
                (s.get(i + 1).and_then(|&b| hex(b)), s.get(i + 2).and_then(|&b| hex(b)))
            else {
                return false;
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Appends one response. `Content-Length` is always set (also for HEAD, where the body is left
/// out); `Connection: close` when the connection ends after it, `Connection: keep-alive` when
/// an HTTP/1.0 client asked for it.
#[allow(clippy::too_many_arguments)]
fn write_response(
    out: &mut Vec<u8>,
    status: &str,
    extra_headers: &str,
    body: &[&[u8]],
    head_only: bool,
    keep_alive: bool,
    version: Version,
    date: &[u8; 29],
) {
    let len: usize = body.iter().map(|part| part.len()).sum();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len}\r\n"
    );
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra_headers.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        for part in body {
            out.extend_from_slice(part);
        }
    }
}

/// Appends the response to a refused head (the connection closes after it).
pub(crate) fn write_reject(out: &mut Vec<u8>, reject: Reject, date: &[u8; 29]) {
    let (status, reason) = match reject {
        Reject::BadRequest(reason) => ("400 Bad Request", reason),
        Reject::BodyTooLarge => ("413 Content Too Large", "the request body is too large"),
        Reject::HeadTooLarge => ("431 Request Header Fields Too Large", "the request head is too large"),
        Reject::NotImplemented(reason) => ("501 Not Implemented", reason),
        Reject::VersionNotSupported => {
            ("505 HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are supported")
        }
    };
    let body: [&[u8]; 4] = [status.as_bytes(), b": ", reason.as_bytes(), b"\n"];
    write_response(out, status, "", &body, false, false, Version::Http11, date);
}

/// Appends a `408 Request Timeout` (the connection closes after it).
pub(crate) fn write_timeout(out: &mut Vec<u8>, date: &[u8; 29]) {
    let body: [&[u8]; 1] = [b"408 Request Timeout: the request took too long to arrive\n"];
    write_response(out, "408 Request Timeout", "", &body, false, false, Version::Http11, date);
}

/// Per-connection protocol state that outlives one call to [`process`].
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Body bytes of the last request still to be skipped.
    pub(crate) skip: u64,
    /// Scratch space for the decoded name (reused: no allocation per request).
    name: Vec<u8>,
}

/// What the connection does after [`process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send the responses (if any), then read more.
    Read,
    /// Send the responses, then close the connection.
    Close,
}

/// What one call to [`process`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Input bytes used (the rest is the start of a request still arriving).
    pub(crate) used: usize,
    /// Requests answered.
    pub(crate) answered: usize,
    /// What to do next.
    pub(crate) next: Next,
}

/// Answers every complete request at the start of `input` (pipelining: several requests in
/// one read get their responses in one write), appending the responses to `out`. Pure: no I/O,
/// no clock (the `Date` value is passed in), no allocation once `out` and the session's name
/// buffer have grown to their working size.
pub(crate) fn process(session: &mut Session, input: &[u8], out: &mut Vec<u8>, date: &[u8; 29]) -> Progress {
    let mut pos = 0;
    let mut answered = 0;
    loop {
        if session.skip > 0 {
            let skip = session.skip.min((input.len() - pos) as u64);
            pos += skip as usize;
            session.skip -= skip;
            if session.skip > 0 {
                return Progress { used: pos, answered, next: Next::Read };
            }
        }
        if pos == input.len() {
            return Progress { used: pos, answered, next: Next::Read };
        }
        let (req, len) = match parse_request(&input[pos..]) {
            Parse::Partial => return Progress { used: pos, answered, next: Next::Read },
            Parse::Invalid(reject) => {
                write_reject(out, reject, date);
                return Progress { used: input.len(), answered: answered + 1, next: Next::Close };
            }
            Parse::Complete(req, len) => (req, len),
        };
        pos += len;
        answered += 1;
        session.skip = req.content_length;
        let head_only = req.method == b"HEAD";
        let (keep_alive, version) = (req.keep_alive, req.version);
        match route(req.method, req.target, &mut session.name) {
            Route::Hello => {
                let body: [&[u8]; 3] = [b"Hello, ", &session.name, b"!"];
                write_response(out, "200 OK", "", &body, head_only, keep_alive, version, date);
            }
            Route::NotFound => {
                let body: [&[u8]; 1] = [b"404 Not Found: try / or /{name}\n"];
                write_response(out, "404 Not Found", "", &body, head_only, keep_alive, version, date);
            }
            Route::MethodNotAllowed => {
                let body: [&[u8]; 1] = [b"405 Method Not Allowed: only GET and HEAD\n"];
                write_response(
                    out,
                    "405 Method Not Allowed",
                    "Allow: GET, HEAD\r\n",
                    &body,
                    false,
                    keep_alive,
                    version,
                    date,
                );
            }
            Route::BadRequest(reason) => {
                write_reject(out, Reject::BadRequest(reason), date);
                return Progress { used: input.len(), answered, next: Next::Close };
            }
        }
        if !keep_alive {
            return Progress { used: input.len(), answered, next: Next::Close };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Date header

/// The `Date` header's value, formatted once per second and shared by every connection.
#[derive(Debug)]
pub(crate) struct DateCache {
    second: Cell<u64>,
    text: Cell<[u8; 29]>,
}

impl DateCache {
    pub(crate) fn new() -> DateCache {
        DateCache { second: Cell::new(u64::MAX), text: Cell::new([b' '; 29]) }
    }

    /// The current date in IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`).
    pub(crate) fn get(&self) -> [u8; 29] {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second.get() {
            self.second.set(second);
            self.text.set(http_date(second));
        }
        self.text.get()
    }
}

/// Formats seconds since the Unix epoch as an IMF-fixdate (RFC 9110 section 5.6.7).
pub(crate) fn http_date(unix_secs: u64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from the day count (Howard Hinnant's `civil_from_days`); 1970-01-01 was a Thursday.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [b' '; 29];
    let _ = write!(
        &mut out[..],
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[((days + 4) % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The connection

/// The deadlines of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// How long an open connection may wait for the first byte of its next request.
    pub(crate) idle_timeout: Duration,
    /// How long a request may take to arrive, from its first byte to its last (`408` after).
    pub(crate) request_timeout: Duration,
    /// How long the client may take to accept a batch of responses.
    pub(crate) write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            idle_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the connection was when its deadline fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Request,
    Writing,
}

/// How the request loop ended (other than by a deadline or an error).
enum End {
    /// The client closed its side.
    PeerClosed,
    /// The server decided to close (`Connection: close`, HTTP/1.0, a refused request).
    Close,
}

/// Serves one connection until the client closes it, a response says `Connection: close`, or
/// a deadline passes.
///
/// Each batch is one read (up to [`MAX_HEAD`] bytes), one call to [`process`] and one write. The
/// deadlines live on one cancel scope for the whole connection, moved with
/// [`CancelHandle::set_deadline`](hatchery::CancelHandle::set_deadline) as the connection goes
/// from idle to reading a request to writing, rather than a new scope per read. When the
/// deadline fires while a request is arriving, the client gets a `408`; while idle or writing,
/// the connection just closes. A connection the server closes is shut down for writing first,
/// and what the client still sends is read and discarded for up to [`LINGER`], so that the last
/// response is not destroyed by a reset.
///
/// # Errors
///
/// The socket's errors (a client that resets its connection, say), and
/// [`Cancelled`](hatchery::Cancelled) if the server is shutting down.
pub(crate) async fn serve_connection(conn: &TcpStream, config: &Config, date: &DateCache) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD].into_boxed_slice();
    let mut out = Vec::with_capacity(512);
    let phase = Cell::new(Phase::Idle);
    let scope = CancelScope::new();
    let deadline = scope.handle();
    let ended = scope
        .run(async {
            let mut session = Session::default();
            let mut filled = 0;
            // When the request now arriving started (its first byte).
            let mut started: Option<Instant> = None;
            loop {
                let (until, p) = match started {
                    None => (now() + config.idle_timeout, Phase::Idle),
                    Some(t) => (t + config.request_timeout, Phase::Request),
                };
                deadline.set_deadline(until);
                phase.set(p);
                let n = conn.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(End::PeerClosed);
                }
                filled += n;
                started.get_or_insert_with(now);
                let progress = process(&mut session, &buf[..filled], &mut out, &date.get());
                buf.copy_within(progress.used..filled, 0);
                filled -= progress.used;
                if progress.answered > 0 {
                    started = (filled > 0 || session.skip > 0).then(now);
                }
                if !out.is_empty() {
                    deadline.set_deadline(now() + config.write_timeout);
                    phase.set(Phase::Writing);
                    conn.write_all(&out).await?;
                    out.clear();
                }
                if progress.next == Next::Close {
                    return Ok(End::Close);
                }
            }
        })
        .await?;
    match ended {
        Some(End::PeerClosed) => Ok(()),
        Some(End::Close) => linger_close(conn, &mut buf).await,
        None if phase.get() == Phase::Request => {
            write_timeout(&mut out, &date.get());
            if move_on_after(config.write_timeout, conn.write_all(&out)).await?.is_some() {
                linger_close(conn, &mut buf).await?;
            }
            Ok(())
        }
        // Idle for too long, or a client that does not read its responses: just close.
        None => Ok(()),
    }
}

/// Shuts down writing (the client sees the end of the responses), then reads and discards
/// what the client still sends, until it closes or [`LINGER`] has passed.
async fn linger_close(conn: &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    conn.shutdown(Shutdown::Write).await?;
    move_on_after(LINGER, async {
        while conn.read(buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await?;
    Ok(())
}
