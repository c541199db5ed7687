//! Frames over TCP for the front end: a frame reader, pipelined outgoing
//! connections matched by message id ([`Pipe`], [`Pipes`]), and the accept
//! loop every front-end server shares ([`serve`]).
//!
//! Both protocols the front end speaks (the client protocol towards storage
//! nodes, the routing protocol between routers, MemDS and the control plane)
//! use the same frames `[u32 length][u32 crc32c][body]` and carry many
//! requests in flight on one connection; they differ only in where a body
//! keeps its id, which is why a [`Pipe`] takes an [`IdOf`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_wire::frame::{FRAME_BODY_MAX_BYTES, FrameDecoder, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Requests one connection may have in flight at a server; the reader stops
/// reading until one is answered.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 1024;
/// Frames queued for one connection's writer.
pub const WRITE_QUEUE_MAX: usize = 1024;
/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A connection failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// Could not connect.
    #[error("connect to {endpoint}: {reason}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The request never left (the connection had already broken).
    #[error("connection to {0} is closed")]
    Closed(String),
    /// The connection broke after the request left: it may have run.
    #[error("connection to {endpoint} lost: {reason}")]
    Lost {
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// No answer in time: it may have run.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        /// Where.
        endpoint: String,
        /// How long was waited.
        timeout: Duration,
    },
}

impl NetError {
    /// Whether the request certainly did not reach the server.
    #[must_use]
    pub fn not_sent(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Closed(_))
    }
}

/// Reads whole frame bodies from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames up to the protocol's limit.
    pub fn new(reader: R) -> Self {
        Self { reader, buf: Vec::new(), start: 0, decoder: FrameDecoder::new(FRAME_BODY_MAX_BYTES) }
    }

    /// The next body; `Ok(None)` at a clean end of stream. A bad frame
    /// (length, checksum) is an error: the stream cannot be resynchronised.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let rest = self.buf.get(self.start..).unwrap_or(&[]);
            match self.decoder.decode(rest) {
                Ok(Some(span)) => {
                    let body = rest.get(span.body_start..span.end).unwrap_or(&[]).to_vec();
                    self.start += span.end;
                    return Ok(Some(body));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad frame: {e}")),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let have = self.buf.len();
            self.buf.resize(have + READ_CHUNK_BYTES, 0);
            let read = self.reader.read(self.buf.get_mut(have..).unwrap_or(&mut [])).await;
            match read {
                Ok(0) => {
                    self.buf.truncate(have);
                    return if have == 0 { Ok(None) } else { Err("stream ended inside a frame".into()) };
                }
                Ok(n) => self.buf.truncate(have + n),
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }
}

/// Reads a body's message id (each protocol keeps it in its own place).
pub type IdOf = fn(&[u8]) -> Option<u64>;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>>>;

/// One pipelined outgoing connection: many requests in flight, answers
/// matched by id.
#[derive(Debug)]
pub struct Pipe {
    endpoint: String,
    frames: mpsc::Sender<Vec<u8>>,
    waiters: Waiters,
}

impl Pipe {
    /// Connects.
    pub async fn open(endpoint: &str, id_of: IdOf, connect_timeout: Duration) -> Result<Self, NetError> {
        let connect = |reason: String| NetError::Connect { endpoint: endpoint.to_owned(), reason };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| connect(format!("no answer within {connect_timeout:?}")))?
            .map_err(|e| connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.into_split();
        let (frames, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_MAX);
        let waiters: Waiters = Arc::default();
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(frame) = outgoing.recv().await {
                // Everything queued meanwhile goes out in the same write.
                out.clear();
                out.extend_from_slice(&frame);
                while let Ok(more) = outgoing.try_recv() {
                    out.extend_from_slice(&more);
                }
                if writer.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        let answers = Arc::clone(&waiters);
        tokio::spawn(async move {
            let mut reader = FrameReader::new(reader);
            let failure = loop {
                match reader.next().await {
                    Ok(Some(body)) => {
                        let Some(id) = id_of(&body) else { break "an answer without a valid id".to_owned() };
                        let waiter = answers.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                        if let Some(tx) = waiter {
                            let _ = tx.send(Ok(body));
                        }
                    }
                    Ok(None) => break "closed by the server".to_owned(),
                    Err(e) => break e,
                }
            };
            let waiting: Vec<_> = answers.lock().unwrap_or_else(PoisonError::into_inner).drain().collect();
            for (_, tx) in waiting {
                let _ = tx.send(Err(failure.clone()));
            }
        });
        Ok(Self { endpoint: endpoint.to_owned(), frames, waiters })
    }

    /// Whether the connection is gone (its writer stopped).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.frames.is_closed()
    }

    /// Sends `body` (whose id is `id`) and waits for the answer with the
    /// same id.
    pub async fn call(&self, id: u64, body: &[u8], timeout: Duration) -> Result<Vec<u8>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner).insert(id, tx);
        let mut frame = Vec::with_capacity(body.len() + 8);
        encode_frame(body, &mut frame);
        if self.frames.send(frame).await.is_err() {
            self.forget(id);
            return Err(NetError::Closed(self.endpoint.clone()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(reason))) => Err(NetError::Lost { endpoint: self.endpoint.clone(), reason }),
            Ok(Err(_)) => Err(NetError::Lost { endpoint: self.endpoint.clone(), reason: "reader stopped".into() }),
            Err(_) => {
                self.forget(id);
                Err(NetError::Timeout { endpoint: self.endpoint.clone(), timeout })
            }
        }
    }

    fn forget(&self, id: u64) {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
}

/// Pipes by endpoint, opened on first use and reopened once broken.
#[derive(Debug)]
pub struct Pipes {
    id_of: IdOf,
    connect_timeout: Duration,
    open: tokio::sync::Mutex<HashMap<String, Arc<Pipe>>>,
}

impl Pipes {
    /// No pipes yet.
    #[must_use]
    pub fn new(id_of: IdOf, connect_timeout: Duration) -> Self {
        Self { id_of, connect_timeout, open: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// The open pipe to `endpoint`, connecting if there is none.
    pub async fn get(&self, endpoint: &str) -> Result<Arc<Pipe>, NetError> {
        let mut open = self.open.lock().await;
        if let Some(pipe) = open.get(endpoint).filter(|p| !p.is_closed()) {
            return Ok(Arc::clone(pipe));
        }
        open.remove(endpoint);
        // Connecting under the lock keeps one connection per endpoint; the
        // connect timeout bounds how long others wait behind it.
        let pipe = Arc::new(Pipe::open(endpoint, self.id_of, self.connect_timeout).await?);
        open.insert(endpoint.to_owned(), Arc::clone(&pipe));
        Ok(pipe)
    }

    /// Sends one request to `endpoint`.
    pub async fn call(&self, endpoint: &str, id: u64, body: &[u8], timeout: Duration) -> Result<Vec<u8>, NetError> {
        let pipe = self.get(endpoint).await?;
        let answer = pipe.call(id, body, timeout).await;
        if let Err(NetError::Lost { .. }) = &answer {
            let mut open = self.open.lock().await;
            if open.get(endpoint).is_some_and(|p| Arc::ptr_eq(p, &pipe)) {
                open.remove(endpoint);
            }
        }
        answer
    }
}

/// What a server does with one request body: the answer's body (an
/// unreadable request is answered with an error).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(self: Arc<Self>, body: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;
}

/// Accepts connections on `listener` and answers each request with
/// `handler`, many in flight per connection (each in its own task, so a
/// long poll does not hold up the others), until the listener fails.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, Arc::clone(&handler)));
    }
}

async fn connection<H: Handler>(stream: TcpStream, handler: Arc<H>) {
    let (reader, mut writer) = stream.into_split();
    let (answers, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_MAX);
    let writer_task = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(body) = outgoing.recv().await {
            out.clear();
            encode_frame(&body, &mut out);
            while let Ok(more) = outgoing.try_recv() {
                encode_frame(&more, &mut out);
            }
            if writer.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(CONNECTION_IN_FLIGHT_MAX));
    let mut reader = FrameReader::new(reader);
    while let Ok(Some(body)) = reader.next().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let (handler, answers) = (Arc::clone(&handler), answers.clone());
        tokio::spawn(async move {
            let _ = answers.send(handler.handle(body).await).await;
            drop(permit);
        });
    }
    drop(answers);
    let _ = writer_task.await;
}

/// The id of a routing message, for [`Pipe`]s of the routing protocol.
/// Read in place: the caller verifies the answer once when it decodes it.
#[must_use]
pub fn routing_id(body: &[u8]) -> Option<u64> {
    keel_wire::protocol::envelope_id(body)
}

/// The request id of a client-protocol response, read in place (the
/// router verifies each answer once, in `protocol::response_error`).
#[must_use]
pub fn response_id(body: &[u8]) -> Option<u64> {
    keel_wire::protocol::envelope_id(body)
}
