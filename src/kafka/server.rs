//! The listener: accepts connections, reads request frames within their
//! limits, runs each request's handler, and writes the responses back in
//! request order.
//!
//! # Threads and bounds
//!
//! The listener runs its own small tokio runtime (`millrace-kafka`, two
//! worker threads), apart from the actor arbiters: a connection's socket
//! I/O never runs on a thread that owns a partition. A handler only
//! decodes, sends messages to actors (partition actors, the group
//! coordinator), awaits their answers and encodes; disk reads of a fetch
//! run on tokio's blocking pool.
//!
//! - Connections: at most `[kafka] max_connections`; one more is closed at
//!   once, with a log line.
//! - A request frame: its declared length is checked against
//!   `request_max_bytes` *before* anything is read into memory; a frame
//!   over it, or one that does not decode, closes the connection with a
//!   log line (Kafka does the same: after a bad frame the byte stream cannot
//!   be trusted).
//! - Requests in flight per connection: [`IN_FLIGHT_PER_CONNECTION`]
//!   (Kafka clients pipeline up to five produce requests per connection);
//!   the reader waits when that many responses are pending.
//! - An idle connection is closed after [`IDLE_TIMEOUT`], as Kafka's
//!   `connections.max.idle.ms`.
//!
//! Nothing a client sends can panic the listener: every decode returns an
//! error, and a panic in a handler (a bug) is caught by its task and closes
//! only that connection.

use super::handlers::{self, Handled, KafkaContext};
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Responses a connection may have pending before its reader waits.
pub(crate) const IN_FLIGHT_PER_CONNECTION: usize = 16;
/// A connection that sends nothing for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// A running listener. Stopping it (or dropping it) closes the listening
/// socket and every connection.
pub(crate) struct KafkaServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaServer {
    /// Binds `context.listen` and starts serving.
    pub(crate) fn start(context: KafkaContext) -> io::Result<KafkaServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("millrace-kafka")
            .enable_io()
            .enable_time()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(context.listen))?;
        let address = listener.local_addr()?;
        let context = Arc::new(context.with_bound_address(address));
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("millrace-kafka-accept".to_owned())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, context, stopped));
                // Dropping the runtime cancels every connection task.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(KafkaServer {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on (useful with port 0).
    pub(crate) fn local_address(&self) -> SocketAddr {
        self.address
    }

    /// Closes the listener and every connection, and waits for its threads.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    context: Arc<KafkaContext>,
    mut stopped: oneshot::Receiver<()>,
) {
    let connections = Arc::new(Semaphore::new(context.max_connections as usize));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(%error, "kafka listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, limit = context.max_connections, "kafka listener: connection limit reached; closing the new connection");
            context
                .counters
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            serve_connection(stream, peer, context).await;
            drop(permit);
        });
    }
}

/// Why a connection was closed by us.
#[derive(Debug)]
enum Close {
    /// The client closed it, or it went idle.
    Ended,
    /// The client broke the protocol; logged with the reason.
    Refused(String),
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, context: Arc<KafkaContext>) {
    let (mut reader, mut writer) = stream.into_split();
    let (pending, mut responses) =
        mpsc::channel::<tokio::task::JoinHandle<Handled>>(IN_FLIGHT_PER_CONNECTION);
    let writer_task = tokio::spawn(async move {
        while let Some(handle) = responses.recv().await {
            match handle.await {
                Ok(Handled::Respond(frame)) => {
                    if writer.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                Ok(Handled::NoResponse) => {}
                Ok(Handled::Close(reason)) => {
                    tracing::warn!(%peer, %reason, "kafka listener: closing the connection");
                    return;
                }
                Err(error) => {
                    tracing::error!(%peer, %error, "kafka listener: a request handler failed; closing the connection");
                    return;
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    let close = read_requests(&mut reader, &context, &pending).await;
    if let Close::Refused(reason) = &close {
        tracing::warn!(%peer, %reason, "kafka listener: refusing the request and closing the connection");
        context
            .counters
            .requests_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        writer_task.abort();
        return;
    }
    // Let the pending responses go out, then close.
    drop(pending);
    let _ = writer_task.await;
}

async fn read_requests(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    context: &Arc<KafkaContext>,
    pending: &mpsc::Sender<tokio::task::JoinHandle<Handled>>,
) -> Close {
    loop {
        let mut length = [0u8; 4];
        match tokio::time::timeout(IDLE_TIMEOUT, reader.read_exact(&mut length)).await {
            Err(_) => return Close::Ended,
            Ok(Err(_)) => return Close::Ended,
            Ok(Ok(_)) => {}
        }
        let length = i32::from_be_bytes(length);
        if length < 0 || length as u64 > context.request_max_bytes {
            return Close::Refused(format!(
                "request frame declares {length} bytes; the limit is {} (request_max_bytes)",
                context.request_max_bytes
            ));
        }
        // Read into uninitialised capacity (no zeroing of large frames).
        let mut frame = BytesMut::with_capacity(length as usize);
        let mut body = (&mut *reader).take(length as u64);
        while frame.len() < length as usize {
            match tokio::time::timeout(IDLE_TIMEOUT, body.read_buf(&mut frame)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => {
                    return Close::Refused(format!(
                        "connection ended inside a {length}-byte request frame"
                    ))
                }
            }
        }
        let request = match handlers::parse(frame.freeze()) {
            Ok(request) => request,
            Err(reason) => return Close::Refused(reason),
        };
        let handle = if request.is_produce() {
            // Submitted here, one request at a time, so the batches of a
            // connection reach each partition in the order they were sent;
            // waiting for durability runs concurrently.
            match handlers::submit_produce(context, request).await {
                Ok(submitted) => {
                    let context = Arc::clone(context);
                    tokio::spawn(async move { submitted.finish(&context).await })
                }
                Err(_) => return Close::Refused("a produce request did not submit".to_owned()),
            }
        } else {
            let context = Arc::clone(context);
            tokio::spawn(async move { handlers::handle(&context, request).await })
        };
        if pending.send(handle).await.is_err() {
            return Close::Ended;
        }
    }
}
