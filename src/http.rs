//! The HTTP listener (`[http] listen`): health, readiness and metrics for
//! operators, orchestrators and Prometheus.
//!
//! # Routes
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /health` | 200, `application/json`: [`Health::to_json`] of [`Probe::health`] |
//! | `GET /ready` | 200 `ready` when [`Health::ready`], else 503 `not ready` (draining makes `ready` false) |
//! | `GET /metrics` | 200, `text/plain; version=0.0.4`: [`Probe::metrics_text`] |
//! | another path | 404 |
//! | another method on one of those paths | 405, with `Allow: GET` |
//! | a malformed request line | 400 |
//! | a request head over [`REQUEST_HEAD_BYTES_MAX`] | 431 |
//! | a request head not received within [`REQUEST_HEAD_TIMEOUT`] | 408 |
//!
//! A query string is ignored (`/health?x` is `/health`). Every answer closes
//! the connection (`Connection: close`).
//!
//! # Bounds
//!
//! One thread, `millrace-http`, serves one connection at a time and one
//! request per connection. A request body is never read (so the start of a
//! next request on the connection could not be found: hence no keep-alive).
//! The head is read into a fixed buffer of [`REQUEST_HEAD_BYTES_MAX`] before a
//! deadline, the answer written before another; so a slow or hostile client
//! holds the thread for a bounded time while the kernel's accept backlog
//! holds the others. The probe is asked once per request.
//!
//! # Why not an HTTP library
//!
//! The brief named `tiny_http` 0.12, the latest release. When it drops a
//! request whose body was not read, it drains the body into one buffer of
//! the declared `Content-Length`: a single request declaring
//! `Content-Length: 1000000000000000` aborts the whole process ("memory
//! allocation failed"), and this listener runs inside the host's process. It
//! also sets no socket timeouts and starts a thread per connection. Three
//! `GET` routes need none of HTTP's hard parts, so this small server keeps
//! every resource bounded instead (test `huge_declared_body_is_not_read`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::health::Health;

/// Largest request head (request line and headers): probes and Prometheus
/// send a few hundred bytes; common servers allow 8 KiB too.
pub(crate) const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Time a client has to send its whole request head. While one client
/// takes it, the others wait, so it is short: a prober sends its request at once.
pub(crate) const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Time a client has to take the whole answer (the metrics text can be
/// a few hundred KiB with many partitions).
pub(crate) const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes discarded, and longest wait, when closing a connection whose
/// client is still sending (see [`close_gracefully`]).
const LINGER_BYTES_MAX: usize = 64 * 1024;
const LINGER_TIMEOUT: Duration = Duration::from_millis(200);

/// Pause after a failed `accept`: errors such as "too many open files"
/// persist, and retrying at once would spin a core and flood the log.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Longest wait for the connection that wakes the listener in [`HttpServer::stop`].
const WAKE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the listener asks the runtime.
pub(crate) trait Probe: Send + Sync + 'static {
    /// The runtime's health now (`/health`, `/ready`).
    fn health(&self) -> Health;
    /// The metrics as Prometheus text (`/metrics`).
    fn metrics_text(&self) -> String;
}

/// The running listener. Dropping it stops it.
pub(crate) struct HttpServer {
    local_address: SocketAddr,
    /// Set by `stop`; the serving thread checks it after each `accept`.
    stopping: Arc<AtomicBool>,
    /// `None` once stopped.
    thread: Option<JoinHandle<()>>,
}

/// The time bounds of one connection; tests shorten them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    request_head_timeout: Duration,
    response_write_timeout: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        request_head_timeout: REQUEST_HEAD_TIMEOUT,
        response_write_timeout: RESPONSE_WRITE_TIMEOUT,
    };
}

impl HttpServer {
    /// Binds `address` and serves on one thread until `stop`.
    pub(crate) fn start(address: SocketAddr, probe: Arc<dyn Probe>) -> io::Result<HttpServer> {
        HttpServer::start_with(address, probe, Limits::DEFAULT)
    }

    fn start_with(
        address: SocketAddr,
        probe: Arc<dyn Probe>,
        limits: Limits,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(address)?;
        let local_address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("millrace-http".to_owned())
            .spawn({
                let stopping = Arc::clone(&stopping);
                move || serve(&listener, probe.as_ref(), &stopping, limits)
            })?;
        tracing::info!(address = %local_address, "HTTP listener serving /health, /ready, /metrics");
        Ok(HttpServer {
            local_address,
            stopping,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub(crate) fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Stops accepting, finishes the request in progress, joins the thread.
    /// Once it returns, the port is closed. Calling it again does nothing.
    pub(crate) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // The thread blocks in `accept`; a connection of our own wakes it to
        // see the flag. It queues behind any connection already waiting, and
        // those are served first. If it cannot connect, the backlog is full,
        // so `accept` returns soon anyway.
        let wake_address = SocketAddr::new(
            connectable(self.local_address.ip()),
            self.local_address.port(),
        );
        if let Err(error) = TcpStream::connect_timeout(&wake_address, WAKE_CONNECT_TIMEOUT) {
            tracing::warn!(
                %error,
                address = %wake_address,
                "HTTP listener: could not wake the listener to stop it; \
                 it stops at the next connection"
            );
        }
        if thread.join().is_err() {
            tracing::warn!("HTTP listener: the listener thread panicked");
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop()
    }
}

/// An address a local connection can reach `ip` at: the loopback address for
/// an unspecified one (`0.0.0.0`, `::`).
fn connectable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The serving thread: one connection at a time until `stopping`.
fn serve(listener: &TcpListener, probe: &dyn Probe, stopping: &AtomicBool, limits: Limits) {
    for connection in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        match connection {
            Ok(stream) => serve_connection(stream, probe, limits),
            Err(error) => {
                tracing::warn!(%error, "HTTP listener: accept failed");
                thread::sleep(ACCEPT_ERROR_BACKOFF);
            }
        }
    }
    tracing::debug!("HTTP listener stopped");
}

/// Reads one request head, answers it, and closes the connection.
fn serve_connection(mut stream: TcpStream, probe: &dyn Probe, limits: Limits) {
    let peer = stream.peer_addr().ok();
    let mut head = [0u8; REQUEST_HEAD_BYTES_MAX];
    let head_deadline = Instant::now() + limits.request_head_timeout;
    let response = match read_request_head(&mut stream, &mut head, head_deadline) {
        Ok(length) => answer(&head[..length], probe),
        // Nothing was asked: a TCP port check, or `stop` waking the thread.
        Err(HeadError::Closed { received: 0 }) => return,
        Err(HeadError::Io(error)) => {
            tracing::warn!(%error, ?peer, "HTTP listener: reading a request failed");
            return;
        }
        Err(error) => {
            tracing::warn!(?peer, "HTTP listener: {error}");
            error.response()
        }
    };
    let deadline = Instant::now() + limits.response_write_timeout;
    if let Err(error) = write_all_before(&mut stream, &response.encode(), deadline) {
        tracing::warn!(%error, ?peer, "HTTP listener: writing an answer failed");
        return;
    }
    close_gracefully(stream);
}

/// Why no request head could be read.
#[derive(Debug)]
enum HeadError {
    /// The client closed its side after `received` bytes, before the head ended.
    Closed { received: usize },
    /// The head did not end within [`REQUEST_HEAD_BYTES_MAX`].
    TooLarge,
    /// The head did not end before the deadline.
    TimedOut,
    /// The socket failed.
    Io(io::Error),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Closed { received } => write!(
                formatter,
                "the client closed its side after {received} bytes of an unfinished request head"
            ),
            HeadError::TooLarge => write!(
                formatter,
                "the request head is over {REQUEST_HEAD_BYTES_MAX} bytes"
            ),
            HeadError::TimedOut => write!(formatter, "the request head did not arrive in time"),
            HeadError::Io(error) => write!(formatter, "{error}"),
        }
    }
}

impl HeadError {
    fn response(&self) -> Response {
        match self {
            HeadError::TooLarge => {
                Response::text(Status::HeaderFieldsTooLarge, "request head too large\n")
            }
            HeadError::TimedOut => Response::text(Status::RequestTimeout, "request timeout\n"),
            HeadError::Closed { .. } | HeadError::Io(_) => {
                Response::text(Status::BadRequest, "bad request\n")
            }
        }
    }
}

/// Reads into `buffer` until the blank line that ends a request head, and
/// returns the head's length. Bytes after it (a body) may have been read
/// into `buffer` too; they are ignored.
fn read_request_head(
    stream: &mut TcpStream,
    buffer: &mut [u8; REQUEST_HEAD_BYTES_MAX],
    deadline: Instant,
) -> Result<usize, HeadError> {
    let mut filled = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(HeadError::Io)?;
        let read = match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Err(HeadError::Closed { received: filled }),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::TimedOut)
            }
            Err(error) => return Err(HeadError::Io(error)),
        };
        // A terminator ending in the new bytes starts at most 2 bytes before them.
        let search_from = filled.saturating_sub(2);
        filled += read;
        if let Some(end) = head_end(&buffer[..filled], search_from) {
            return Ok(end);
        }
        if filled == buffer.len() {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The end of the head in `bytes`: just past the first `\n\r\n` or `\n\n`
/// (a bare `\n` ends lines too, as RFC 9112 lets a server accept) at or
/// after `from`.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len())
        .filter(|&index| bytes[index] == b'\n')
        .find_map(|index| match &bytes[index + 1..] {
            [b'\n', ..] => Some(index + 2),
            [b'\r', b'\n', ..] => Some(index + 3),
            _ => None,
        })
}

/// The parts of a request line that choose the answer.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    /// The target without its query string.
    path: &'a str,
}

/// `METHOD /path HTTP/1.x` from the first line of `head`, or `None` if that
/// line is not one.
fn parse_request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line = head.split(|&byte| byte == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let method_valid = !method.is_empty() && method.bytes().all(|byte| byte.is_ascii_graphic());
    let target_valid =
        target.starts_with('/') && target.bytes().all(|byte| byte.is_ascii_graphic());
    let version_valid = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if parts.next().is_some() || !method_valid || !target_valid || !version_valid {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(RequestLine { method, path })
}

/// The answer to a complete request head. A panic in the probe is a bug
/// elsewhere; it is answered with 500 rather than taking the listener (and
/// so the operator's view of the runtime) down with it.
fn answer(head: &[u8], probe: &dyn Probe) -> Response {
    let Some(request) = parse_request_line(head) else {
        tracing::warn!("HTTP listener: malformed request line");
        return Response::text(Status::BadRequest, "bad request\n");
    };
    panic::catch_unwind(AssertUnwindSafe(|| route(&request, probe))).unwrap_or_else(|_| {
        tracing::warn!(path = request.path, "HTTP listener: the probe panicked");
        Response::text(Status::InternalServerError, "internal error\n")
    })
}

fn route(request: &RequestLine<'_>, probe: &dyn Probe) -> Response {
    const ROUTES: [&str; 3] = ["/health", "/ready", "/metrics"];
    if !ROUTES.contains(&request.path) {
        return Response::text(Status::NotFound, "not found\n");
    }
    if request.method != "GET" {
        return Response::text(Status::MethodNotAllowed, "method not allowed\n");
    }
    match request.path {
        "/health" => Response {
            status: Status::Ok,
            content_type: "application/json",
            body: probe.health().to_json().into_bytes(),
        },
        "/ready" if probe.health().ready => Response::text(Status::Ok, "ready\n"),
        "/ready" => Response::text(Status::ServiceUnavailable, "not ready\n"),
        _ => Response {
            status: Status::Ok,
            content_type: "text/plain; version=0.0.4",
            body: probe.metrics_text().into_bytes(),
        },
    }
}

/// The statuses this listener answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderFieldsTooLarge,
    InternalServerError,
    ServiceUnavailable,
}

impl Status {
    fn code_and_reason(self) -> (u16, &'static str) {
        match self {
            Status::Ok => (200, "OK"),
            Status::BadRequest => (400, "Bad Request"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::HeaderFieldsTooLarge => (431, "Request Header Fields Too Large"),
            Status::InternalServerError => (500, "Internal Server Error"),
            Status::ServiceUnavailable => (503, "Service Unavailable"),
        }
    }
}

/// An answer, before encoding.
struct Response {
    status: Status,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: Status, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    /// The HTTP/1.1 bytes: status line, headers, body.
    fn encode(&self) -> Vec<u8> {
        let (code, reason) = self.status.code_and_reason();
        let allow = if self.status == Status::MethodNotAllowed {
            "Allow: GET\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.content_type,
            self.body.len()
        );
        let mut bytes = Vec::with_capacity(head.len() + self.body.len());
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// `write_all`, failing once `deadline` passes (a per-call write timeout
/// alone would let a client that reads a byte at a time hold the thread).
fn write_all_before(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take the answer in time",
            ));
        }
        stream.set_write_timeout(Some(remaining))?;
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(count) => written += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Closes so that the client can read the answer. Closing a socket that has
/// unread input (a body this listener never reads) makes the kernel send a
/// reset, which can destroy the answer before the client reads it. So: end
/// our side first, then discard what the client still sends, up to
/// [`LINGER_BYTES_MAX`] or [`LINGER_TIMEOUT`], until it closes its side.
fn close_gracefully(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIMEOUT;
    let mut discard = [0u8; 4096];
    let mut discarded = 0;
    while discarded < LINGER_BYTES_MAX {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut discard) {
            Ok(0) | Err(_) => return,
            Ok(count) => discarded += count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{LoadState, PartitionHealth, Phase};
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// A probe whose readiness the test sets.
    struct FakeProbe {
        ready: AtomicBool,
    }

    impl Probe for FakeProbe {
        fn health(&self) -> Health {
            Health {
                ready: self.ready.load(Ordering::SeqCst),
                draining: false,
                partitions: vec![PartitionHealth {
                    topic: "events".to_owned(),
                    partition: 0,
                    phase: Phase::Serving,
                    load: LoadState::Complete {
                        coverage_percent: 100.0,
                        quarantined_blocks: Vec::new(),
                    },
                    degraded: Vec::new(),
                    restarts: 0,
                    log_start_offset: 0,
                    log_end_offset: 42,
                    high_watermark: 42,
                    replica: None,
                }],
                pipelines: Vec::new(),
            }
        }

        fn metrics_text(&self) -> String {
            "# TYPE millrace_records_produced_total counter\nmillrace_records_produced_total 7\n"
                .to_owned()
        }
    }

    fn start(ready: bool) -> (HttpServer, Arc<FakeProbe>) {
        let probe = Arc::new(FakeProbe {
            ready: AtomicBool::new(ready),
        });
        let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), probe.clone())
            .expect("bind 127.0.0.1:0");
        (server, probe)
    }

    /// An answer as received.
    #[derive(Debug)]
    struct Answer {
        status_line: String,
        headers: String,
        body: String,
    }

    /// Sends `request` on a new connection and reads the answer to the end.
    fn exchange(address: SocketAddr, request: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).expect("write request");
        read_answer(&mut stream)
    }

    fn read_answer(stream: &mut TcpStream) -> Answer {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("read answer");
        let text = String::from_utf8(bytes).expect("UTF-8 answer");
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let answer = Answer {
            status_line: status_line.to_owned(),
            headers: headers.to_owned(),
            body: body.to_owned(),
        };
        let length = format!("Content-Length: {}", answer.body.len());
        assert!(answer.headers.contains(&length), "{answer:?}");
        assert!(answer.headers.contains("Connection: close"), "{answer:?}");
        answer
    }

    fn get(address: SocketAddr, path: &str) -> Answer {
        exchange(
            address,
            format!("GET {path} HTTP/1.1\r\nHost: millrace\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
    }

    #[test]
    fn health_is_the_json_of_the_probe() {
        let (server, probe) = start(true);
        let answer = get(server.local_address(), "/health");
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert!(
            answer.headers.contains("Content-Type: application/json"),
            "{answer:?}"
        );
        assert_eq!(answer.body, probe.health().to_json());
        let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        assert_eq!(json["ready"], true);
        assert_eq!(json["partitions"][0]["log_end_offset"], 42);
        // A query string does not change the route.
        assert_eq!(
            get(server.local_address(), "/health?pretty=1").status_line,
            "HTTP/1.1 200 OK"
        );
    }

    #[test]
    fn ready_follows_the_probe() {
        let (server, probe) = start(true);
        let answer = get(server.local_address(), "/ready");
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert_eq!(answer.body, "ready\n");
        probe.ready.store(false, Ordering::SeqCst);
        let answer = get(server.local_address(), "/ready");
        assert_eq!(answer.status_line, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(answer.body, "not ready\n");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let (server, probe) = start(true);
        let answer = get(server.local_address(), "/metrics");
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert!(
            answer
                .headers
                .contains("Content-Type: text/plain; version=0.0.4"),
            "{answer:?}"
        );
        assert_eq!(answer.body, probe.metrics_text());
    }

    #[test]
    fn unknown_path_is_404_and_other_methods_405() {
        let (server, _) = start(true);
        let address = server.local_address();
        for path in ["/", "/healthz", "/health/", "/metrics.json"] {
            assert_eq!(
                get(address, path).status_line,
                "HTTP/1.1 404 Not Found",
                "{path}"
            );
        }
        for method in ["POST", "PUT", "DELETE", "HEAD"] {
            let answer = exchange(
                address,
                format!("{method} /health HTTP/1.1\r\n\r\n").as_bytes(),
            );
            assert_eq!(
                answer.status_line, "HTTP/1.1 405 Method Not Allowed",
                "{method}"
            );
            assert!(answer.headers.contains("Allow: GET"), "{answer:?}");
        }
        // HTTP/1.0 and bare line feeds are still HTTP.
        let answer = exchange(address, b"GET /ready HTTP/1.0\n\n");
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    }

    #[test]
    fn garbage_is_answered_400_and_the_server_keeps_serving() {
        let (server, _) = start(true);
        let address = server.local_address();
        for garbage in [
            &b"\x00\x01\xff\xfe garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /health HTTP/2.0\r\n\r\n",
            b"GET health HTTP/1.1\r\n\r\n",
            b"GET /health HTTP/1.1 extra\r\n\r\n",
        ] {
            let answer = exchange(address, garbage);
            assert_eq!(
                answer.status_line, "HTTP/1.1 400 Bad Request",
                "{garbage:?}"
            );
        }
        // Garbage and then the client's end, with no blank line.
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"\x16\x03\x01 not http").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            read_answer(&mut stream).status_line,
            "HTTP/1.1 400 Bad Request"
        );
        // A connection that sends nothing and closes.
        drop(TcpStream::connect(address).unwrap());
        assert_eq!(get(address, "/health").status_line, "HTTP/1.1 200 OK");
    }

    #[test]
    fn oversized_head_is_431() {
        let (server, _) = start(true);
        let mut request = b"GET /health HTTP/1.1\r\nX-Padding: ".to_vec();
        request.resize(REQUEST_HEAD_BYTES_MAX + 1024, b'a');
        let answer = exchange(server.local_address(), &request);
        assert_eq!(
            answer.status_line,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        assert_eq!(
            get(server.local_address(), "/ready").status_line,
            "HTTP/1.1 200 OK"
        );
    }

    /// The request that aborted the process under tiny_http 0.12: a declared
    /// body far larger than memory, of which only a little arrives.
    #[test]
    fn huge_declared_body_is_not_read() {
        let (server, _) = start(true);
        let address = server.local_address();
        let body = vec![b'x'; 16 * 1024];
        for method in ["GET", "POST"] {
            let mut request =
                format!("{method} /health HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n")
                    .into_bytes();
            request.extend_from_slice(&body);
            let expected = if method == "GET" {
                "HTTP/1.1 200 OK"
            } else {
                "HTTP/1.1 405 Method Not Allowed"
            };
            assert_eq!(exchange(address, &request).status_line, expected);
        }
        // Chunked, never finished.
        let answer = exchange(
            address,
            b"GET /ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\nxx",
        );
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert_eq!(get(address, "/ready").body, "ready\n");
    }

    #[test]
    fn slow_head_times_out_with_408_and_the_server_keeps_serving() {
        let probe = Arc::new(FakeProbe {
            ready: AtomicBool::new(true),
        });
        let limits = Limits {
            request_head_timeout: Duration::from_millis(100),
            ..Limits::DEFAULT
        };
        let server = HttpServer::start_with("127.0.0.1:0".parse().unwrap(), probe, limits).unwrap();
        // The head never ends; the read below returns once the server gives up.
        let answer = exchange(
            server.local_address(),
            b"GET /health HTTP/1.1\r\nHost: x\r\n",
        );
        assert_eq!(answer.status_line, "HTTP/1.1 408 Request Timeout");
        assert_eq!(
            get(server.local_address(), "/ready").status_line,
            "HTTP/1.1 200 OK"
        );
    }

    /// A probe that panics, to show a bug behind the probe costs one answer.
    struct PanickingProbe;

    impl Probe for PanickingProbe {
        fn health(&self) -> Health {
            panic!("probe bug (expected by the test)")
        }
        fn metrics_text(&self) -> String {
            "up 1\n".to_owned()
        }
    }

    #[test]
    fn a_panicking_probe_gets_500_and_the_server_keeps_serving() {
        let server =
            HttpServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(PanickingProbe)).unwrap();
        let answer = get(server.local_address(), "/health");
        assert_eq!(answer.status_line, "HTTP/1.1 500 Internal Server Error");
        assert_eq!(get(server.local_address(), "/metrics").body, "up 1\n");
    }

    #[test]
    fn stop_closes_the_port_and_is_idempotent() {
        let (mut server, _) = start(true);
        let address = server.local_address();
        assert_eq!(get(address, "/ready").status_line, "HTTP/1.1 200 OK");
        server.stop();
        let refused = TcpStream::connect(address).expect_err("the port should be closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        server.stop();
        drop(server);
    }

    /// A probe that holds `/health` until the test lets it go.
    struct GatedProbe {
        entered: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Probe for GatedProbe {
        fn health(&self) -> Health {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            Health {
                ready: true,
                draining: false,
                partitions: Vec::new(),
                pipelines: Vec::new(),
            }
        }
        fn metrics_text(&self) -> String {
            String::new()
        }
    }

    #[test]
    fn stop_finishes_the_request_in_progress() {
        let (entered_sender, entered) = mpsc::channel();
        let (release, release_receiver) = mpsc::channel();
        let probe = Arc::new(GatedProbe {
            entered: Mutex::new(entered_sender),
            release: Mutex::new(release_receiver),
        });
        let mut server = HttpServer::start("127.0.0.1:0".parse().unwrap(), probe).unwrap();
        let address = server.local_address();
        let stopping = Arc::clone(&server.stopping);
        let client = thread::spawn(move || get(address, "/health"));
        entered.recv().expect("the request reaches the probe");
        let stopper = thread::spawn(move || server.stop());
        // Let the probe answer only once stop has begun.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stopping.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "stop did not begin");
            thread::yield_now();
        }
        release.send(()).unwrap();
        let answer = client.join().unwrap();
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert!(answer.body.contains("\"ready\": true"), "{answer:?}");
        stopper.join().unwrap();
        assert!(TcpStream::connect(address).is_err());
    }

    #[test]
    fn the_thread_is_named() {
        let (server, _) = start(true);
        let name = server
            .thread
            .as_ref()
            .unwrap()
            .thread()
            .name()
            .map(str::to_owned);
        assert_eq!(name.as_deref(), Some("millrace-http"));
    }

    #[test]
    fn binding_a_taken_port_fails() {
        let (server, _) = start(true);
        let taken = HttpServer::start(server.local_address(), Arc::new(PanickingProbe));
        assert_eq!(
            taken.err().map(|error| error.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
    }

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request_line(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(RequestLine {
                method: "GET",
                path: "/health"
            })
        );
        for bad in [
            &b""[..],
            b"\r\n",
            b"GET /\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"G\xffT / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"a\r\n\r", 0), None);
        // Found when the terminator straddles two reads.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 14), Some(18));
    }
}
