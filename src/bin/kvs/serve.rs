//! `kvs serve`: the store as an HTTP/1.1 volume server in the shape minikeyvalue's master
//! expects of its volumes (nginx with WebDAV): the URL path, percent-decoded, is the key.
//!
//! - `PUT` stores the body: `201 Created`, or `204` when it replaced a value (never 200);
//!   durable by then unless the store runs in `batch` or `none` (main.rs opens it in
//!   `always` unless told otherwise). A Content-Length over the store's max value size
//!   gets `413` before the body is read; a chunked body gets it as soon as it passes the
//!   limit. Nothing is stored then, nor for a body cut short, nor without Content-Length
//!   or chunks (`411`), nor for part of a value (Content-Range: `501`).
//! - `GET`: `200` with the value, `404`; one `Range: bytes=a-b` (`a-`, `-n`) gives `206`
//!   with Content-Range, an unsatisfiable one `416`. Only checked bytes are sent.
//! - `HEAD`: `200` with Content-Length from the index alone (no read of the value), `404`.
//! - `DELETE`: `204`, `404`.
//! - `GET` of a path ending in `/`: the directory listing in nginx's JSON autoindex form
//!   (`dirs.rs`), for minikeyvalue's rebuild; but the value, if one is stored under that
//!   path (minikeyvalue's paths are standard base64, which may end in `/`).
//! - A key over 4096 bytes: `414`; another method: `405`.
//!
//! Bodies in memory at once are capped (`--max-inflight`, at least one largest value, for
//! uploads and as much again for values being sent, so that neither waits behind the
//! other): an upload waits for room before it is received, a GET before it reads the
//! value, and a value gives its room back once it is sent (`Held`); an upload that finds
//! no room within `--body-timeout` gets `503`. A body that pauses longer than
//! `--body-timeout` gets `408` and nothing is stored. A response the client takes nothing of for `--send-timeout`
//! closes the connection (`stall.rs`).
//!
//! Engine calls that may wait (for the disk, the ring, a lock held across a copy) run on
//! tokio's blocking pool (puts and deletes on at most `WRITERS` of its threads, so gets
//! never queue behind them), never on the reactor threads (`--threads`, default half the
//! CPUs); a HEAD (and the check whether a path ending in `/` holds a value) answers on
//! the reactor thread from the index when its lock is free at once
//! (`Store::try_value_len`), and goes to the pool otherwise. One access
//! line per request goes to the log (`RUST_LOG=kvs=info`). SIGTERM or SIGINT: stop
//! accepting, let the requests in flight finish (up to 10 s), close the store, exit 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE, TRANSFER_ENCODING,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use kvs::{Error, Store, MAX_KEY_LEN};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use crate::dirs::Dirs;
use crate::metrics::Metrics;
use crate::stall::StallLimit;
use crate::{Failure, Res, EXIT_IO};

/// What every request shares.
struct State {
    store: Store,
    dirs: Dirs,
    /// Bytes of request bodies being received or stored at once: an upload waits for its
    /// share, so memory stays bounded however many clients upload.
    uploads: Budget,
    /// Bytes of values being sent at once: a GET waits for its share before it reads.
    sending: Budget,
    /// The longest wait for the next part of a request body.
    body_timeout: Duration,
    /// Places on the blocking pool for puts and deletes (`writing`).
    writers: Arc<tokio::sync::Semaphore>,
    metrics: Metrics,
    /// The options the store was opened with (for `/stats`).
    opts: kvs::Options,
}

/// How `kvs serve` runs besides the store's options.
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Bytes of request bodies in memory at once, and of values being sent (each at least
    /// the store's max value size).
    pub inflight_bytes: u64,
    pub body_timeout: Duration,
    /// The longest a response may wait for the client to take more of it.
    pub send_timeout: Duration,
    /// Where the admin listener (`/metrics`, `/stats`) listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// Threads that parse requests and route them (engine calls that may wait run on a
    /// separate blocking pool of up to 64 threads).
    pub threads: usize,
}

/// The default of `--threads`: half the CPUs, at least one. The HTTP work per request is
/// small next to the kernel's, and fewer reactor threads wake each other less: on 2 cores,
/// one thread served more requests per second than two in 11 of 12 phase comparisons of
/// httpbench (two runs: -5% to +28%), at less server CPU per request in all.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Threads of the blocking pool that runs engine calls, and how many of them puts and
/// deletes may hold at once (the rest stay for gets).
const BLOCKING_THREADS: usize = 64;
const WRITERS: usize = 48;

/// How long the requests in flight may take to finish after SIGTERM or SIGINT.
const DRAIN: Duration = Duration::from_secs(10);
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the accept loop waits after a failed accept (no file descriptor left, say)
/// before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type Body = Full<Bytes>;

/// A value being sent and its room in the budget of values being sent, given back when the
/// last `Bytes` of it is dropped: once hyper has written it, or the connection is gone.
struct Held<T> {
    value: T,
    _room: OwnedSemaphorePermit,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Held<T> {
    fn as_ref(&self) -> &[u8] {
        self.value.as_ref()
    }
}

/// Bytes of bodies in memory at once, one permit a KiB. Requests wait in turn (tokio's
/// semaphore is fair), so a request never waits while it holds room: one that did could
/// wait for ever on one queued behind it.
struct Budget {
    sem: Arc<tokio::sync::Semaphore>,
    kib: u64,
}

impl Budget {
    fn new(bytes: u64) -> Budget {
        let kib = bytes
            .div_ceil(1024)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS as u64);
        Budget {
            sem: Arc::new(tokio::sync::Semaphore::new(kib as usize)),
            kib,
        }
    }

    fn kib(&self, bytes: u64) -> u32 {
        bytes.div_ceil(1024).clamp(1, self.kib) as u32
    }

    /// Room for `bytes`, waited for; `None` once the server is shutting down.
    async fn room(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        self.sem
            .clone()
            .acquire_many_owned(self.kib(bytes))
            .await
            .ok()
    }

    /// Grows `room` to hold `bytes` if the budget has that much free now; else leaves it
    /// (the value is in memory already: waiting would hold room while waiting for room).
    fn top_up(&self, room: &mut OwnedSemaphorePermit, bytes: u64) {
        let have = room.num_permits() as u32;
        let want = self.kib(bytes);
        if want > have {
            if let Ok(more) = self.sem.clone().try_acquire_many_owned(want - have) {
                room.merge(more);
            }
        }
    }

    /// Bytes counted now.
    fn held_bytes(&self) -> u64 {
        (self.kib - self.sem.available_permits() as u64) * 1024
    }

    /// Refuses every later request for room, and wakes those waiting with `None`.
    fn close(&self) {
        self.sem.close();
    }
}

impl State {
    /// Bytes of bodies held now, uploads' and values being sent.
    fn held_bytes(&self) -> u64 {
        self.uploads.held_bytes() + self.sending.held_bytes()
    }
}

/// Serves the open `store` on `listen` until SIGTERM or SIGINT; then closes it.
pub fn serve(store: Store, opts: kvs::Options, cfg: ServeConfig) -> Res<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("kvs-serve")
        .build()
        .map_err(|e| Failure(EXIT_IO, format!("starting the server: {e}")))?;
    let dirs = Dirs::load(&store)?;
    log::info!("kvs serve: {} keys in the directory view", dirs.len());
    let budget = cfg.inflight_bytes.max(store.max_value_size() as u64);
    let state = Arc::new(State {
        store,
        dirs,
        uploads: Budget::new(budget),
        sending: Budget::new(budget),
        body_timeout: cfg.body_timeout,
        writers: Arc::new(tokio::sync::Semaphore::new(WRITERS)),
        metrics: Metrics::new(),
        opts,
    });
    rt.block_on(run(state.clone(), cfg.listen, cfg.admin, cfg.send_timeout))?;
    drop(rt);
    let state = Arc::try_unwrap(state)
        .map_err(|_| Failure(EXIT_IO, "requests still hold the store".into()))?;
    state.store.close()?;
    Ok(0)
}

async fn bind(addr: SocketAddr) -> Res<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure(EXIT_IO, format!("listening on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure(EXIT_IO, format!("{e}")))?;
    Ok((listener, local))
}

async fn run(
    state: Arc<State>,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    send_timeout: Duration,
) -> Res<()> {
    let (listener, local) = bind(listen).await?;
    let admin = match admin {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    // The first line on stdout says where (with --listen 127.0.0.1:0, the port chosen),
    // the second where the admin listener is, if there is one.
    println!("listening on http://{local}");
    if let Some((admin, at)) = admin {
        println!("admin on http://{at}");
        log::info!("kvs serve: admin listener on {at}");
        tokio::spawn(run_admin(state.clone(), admin));
    }
    log::info!(
        "kvs serve: listening on {local}, store {}",
        state.store.path().display()
    );
    let graceful = GracefulShutdown::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure(EXIT_IO, format!("signals: {e}")))?;
    // One SIGINT listener for the whole loop: one made anew on each pass would miss a
    // SIGINT arriving between two passes (tokio delivers it to the listeners there are).
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure(EXIT_IO, format!("signals: {e}")))?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| handle(state.clone(), peer, req));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(StallLimit::new(stream, send_timeout)), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("connection from {peer}: {e}");
            }
        });
    }
    log::info!("kvs serve: stopping; letting the requests in flight finish");
    drop(listener);
    // Requests still waiting for room get 503 now rather than at the drain's end.
    state.uploads.close();
    state.sending.close();
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("kvs serve: requests still running after {DRAIN:?}; closing anyway");
    }
    Ok(())
}

/// The key of a request path: the path percent-decoded, as nginx maps it to a file.
/// `None` if an escape is malformed.
fn key_of(path: &str) -> Option<Vec<u8>> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits (from_str_radix alone took `%+1` as 0x01: two paths, one key).
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    reply(status, format!("{msg}\n"))
}

/// The one byte range of a `Range` header for a value of `len` bytes: Ok(Some((start,
/// end exclusive))), Ok(None) to send the whole value (no or unsupported header),
/// Err(()) if unsatisfiable.
fn range(header: Option<&HeaderValue>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole value, as a server may
    }
    if len == 0 {
        // An empty value has no byte to give: every range is unsatisfiable (RFC 9110).
        return Err(());
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match parse(b) {
            Some(0) => Err(()),
            Some(n) => Ok(Some((len.saturating_sub(n), len))),
            None => Ok(None),
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return Ok(None);
            };
            let end = if b.is_empty() {
                len
            } else {
                match parse(b) {
                    Some(e) if e >= start => e.saturating_add(1).min(len),
                    _ => return Ok(None),
                }
            };
            if start >= len {
                Err(())
            } else {
                Ok(Some((start, end)))
            }
        }
        (true, true) => Ok(None),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Failed(format!("a request's engine call died: {e}"))))
}

/// A put or delete on the blocking pool, once one of `WRITERS` places is free: puts may
/// wait there (for ring space, a durable commit, the reclaimer's pace), and with every
/// thread of the pool taken by them, gets queued behind (measured: GET p50 1 ms with 60
/// uploading clients, 289-414 ms with 120). The place, and `room` (an upload's share of
/// the budget), are given back when `f` returns, not when the request ends: a client gone
/// mid-request drops the request, while the engine call on the pool runs on (found by
/// review: more than `WRITERS` puts could then hold the pool, and bodies in memory pass
/// `--max-inflight`).
async fn writing<T: Send + 'static>(
    state: &Arc<State>,
    room: Option<OwnedSemaphorePermit>,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let Ok(place) = state.writers.clone().acquire_owned().await else {
        return Err(Error::Closed);
    };
    blocking(move || {
        let res = f();
        drop((place, room));
        res
    })
    .await
}

/// The answer to a HEAD: the value's length from the index, or 404.
fn head(len: Result<Option<usize>, Error>) -> Response<Body> {
    match len {
        Ok(Some(n)) => {
            let mut r = reply(StatusCode::OK, Bytes::new());
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        Ok(None) => reply(StatusCode::NOT_FOUND, Bytes::new()),
        Err(e) => failed(&e),
    }
}

/// The response for an engine error.
fn failed(e: &Error) -> Response<Body> {
    let status = match e {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, &e.to_string())
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = route(state.clone(), req).await;
    let sent = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    state
        .metrics
        .request(&method, resp.status().as_u16(), started.elapsed(), sent);
    log::info!(
        "{peer} {method} {path} {} {} {}us",
        resp.status().as_u16(),
        resp.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        started.elapsed().as_micros()
    );
    Ok(resp)
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let Some(key) = key_of(req.uri().path()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed percent escape in the path",
        );
    };
    if key.len() > MAX_KEY_LEN {
        return text(StatusCode::URI_TOO_LONG, "the key is over 4096 bytes");
    }
    // A path ending in `/` is a directory listing, unless a value is stored under it:
    // minikeyvalue's volume paths are standard base64, which may end in `/`.
    let listing = key.ends_with(b"/")
        && matches!(*req.method(), Method::GET | Method::HEAD)
        && !matches!(value_len(&state, &key).await, Ok(Some(_)));
    if listing {
        let head = req.method() == Method::HEAD;
        let json = blocking(move || Ok(state.dirs.list(&key))).await;
        return match json {
            Ok(json) => {
                let n = json.len();
                let mut r = reply(StatusCode::OK, if head { String::new() } else { json });
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
                r
            }
            Err(e) => failed(&e),
        };
    }
    match *req.method() {
        Method::PUT => put(state, key, req).await,
        Method::GET => get(state, key, req.headers().get(RANGE).cloned()).await,
        Method::HEAD => head(value_len(&state, &key).await),
        Method::DELETE => {
            let st = state.clone();
            let res = writing(&state, None, move || {
                let existed = st.store.delete(&key);
                st.dirs.refresh(&st.store, &key);
                existed
            })
            .await;
            match res {
                Ok(true) => reply(StatusCode::NO_CONTENT, Bytes::new()),
                Ok(false) => text(StatusCode::NOT_FOUND, "not found"),
                Err(e) => failed(&e),
            }
        }
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, HEAD, PUT or DELETE",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD, PUT, DELETE"));
            r
        }
    }
}

/// The length of `key`'s value, from the index alone: on this thread when the index's lock
/// is free (no hop to the blocking pool), else on the pool.
async fn value_len(state: &Arc<State>, key: &[u8]) -> kvs::Result<Option<usize>> {
    match state.store.try_value_len(key) {
        Some(r) => r,
        None => {
            let (st, k) = (state.clone(), key.to_vec());
            blocking(move || st.store.value_len(&k)).await
        }
    }
}

async fn put(state: Arc<State>, key: Vec<u8>, req: Request<Incoming>) -> Response<Body> {
    let max = state.store.max_value_size();
    let headers = req.headers();
    if headers.contains_key(CONTENT_RANGE) {
        // A part of a value (`curl -C -` resumes an upload so): storing it as the whole
        // value would be wrong, and nginx refuses it too.
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "a PUT of part of a value (Content-Range) is not supported",
        );
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_none() && !headers.contains_key(TRANSFER_ENCODING) {
        // Neither length nor chunks: HTTP reads no body (an HTTP/1.0 client's bytes would
        // be taken for the next request), so an empty value would be stored. nginx: 411.
        return text(
            StatusCode::LENGTH_REQUIRED,
            "a PUT needs Content-Length or a chunked body",
        );
    }
    if declared.is_some_and(|n| n > max as u64) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("values are at most {max} bytes"),
        );
    }
    // Room in the budget of bodies in memory: the declared length, or the most a chunked
    // body may take; waited for at most the body timeout (uploads that stall could hold
    // it all), then 503.
    let room = state.uploads.room(declared.unwrap_or(max as u64));
    let room = match tokio::time::timeout(state.body_timeout, room).await {
        Ok(Some(room)) => room,
        Ok(None) => return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        Err(_) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no room for the body in time (--max-inflight)",
            )
        }
    };
    // A chunked body is cut off as soon as it passes the limit; one cut short by the
    // client, or with a pause longer than the body timeout, is an error: nothing is
    // stored either way.
    let collect = receive(
        req.into_body(),
        declared.unwrap_or(0).min(max as u64),
        max,
        state.body_timeout,
    );
    let body = match collect.await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("values are at most {max} bytes"),
            );
        }
        Err(Received::Late) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            )
        }
        Err(Received::Bad(e)) => {
            return text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"))
        }
    };
    let n = body.len() as u64;
    let st = state.clone();
    let res = writing(&state, Some(room), move || {
        let store = &st.store;
        let existed = store.value_len(&key)?.is_some();
        let res = store.put(&key, &body);
        st.dirs.refresh(store, &key);
        res.map(|()| existed)
    })
    .await;
    if res.is_ok() {
        state.metrics.received(n);
    }
    match res {
        Ok(true) => reply(StatusCode::NO_CONTENT, Bytes::new()),
        Ok(false) => reply(StatusCode::CREATED, Bytes::new()),
        Err(e) => failed(&e),
    }
}

/// Why a body was not received.
enum Received {
    /// No part of it came for the body timeout.
    Late,
    /// The connection failed or the body was cut short.
    Bad(hyper::Error),
}

/// The body of a request, copied frame by frame into one buffer (`expected` bytes to
/// start with): `None` once it passes `max` bytes. Collecting the frames instead kept each
/// one (and the read buffer behind it) until the end: a body sent in 1-byte chunks took
/// dozens of times its size, beyond what `--max-inflight` counts. `timeout` bounds each
/// wait for the next part, as nginx's `client_body_timeout` does (it bounded the whole
/// body before: a large upload at a steady but modest rate got 408).
async fn receive(
    mut body: Incoming,
    expected: u64,
    max: usize,
    timeout: Duration,
) -> Result<Option<Bytes>, Received> {
    let mut buf = Vec::with_capacity(expected as usize);
    loop {
        let next = tokio::time::timeout(timeout, body.frame()).await;
        let Some(frame) = next.map_err(|_| Received::Late)? else {
            break;
        };
        if let Ok(data) = frame.map_err(Received::Bad)?.into_data() {
            if buf.len() + data.len() > max {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(Bytes::from(buf)))
}

async fn get(state: Arc<State>, key: Vec<u8>, range_header: Option<HeaderValue>) -> Response<Body> {
    // Room for the value before it is read (its length from the index; a value replaced
    // meanwhile by a longer one takes the rest of its room if it is free).
    let expected = match value_len(&state, &key).await {
        Ok(Some(n)) => n as u64,
        Ok(None) => return text(StatusCode::NOT_FOUND, "not found"),
        Err(e) => return failed(&e),
    };
    let Some(mut room) = state.sending.room(expected).await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let st = state.clone();
    let value = match blocking(move || st.store.get(&key)).await {
        Ok(Some(v)) => v,
        Ok(None) => return text(StatusCode::NOT_FOUND, "not found"),
        Err(e) => return failed(&e),
    };
    let len = value.len() as u64;
    state.sending.top_up(&mut room, len);
    let value = Bytes::from_owner(Held { value, _room: room });
    match range(range_header.as_ref(), len) {
        Ok(None) => reply(StatusCode::OK, value),
        Ok(Some((a, b))) => {
            let mut r = reply(
                StatusCode::PARTIAL_CONTENT,
                value.slice(a as usize..b as usize),
            );
            let cr = format!("bytes {a}-{}/{len}", b - 1);
            r.headers_mut()
                .insert(CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
            r
        }
        Err(()) => {
            let mut r = reply(StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new());
            let cr = format!("bytes */{len}");
            r.headers_mut()
                .insert(CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
            r
        }
    }
}

/// `kvs serve DIR`: opens (or creates) the store and serves it.
pub fn serve_dir(dir: &Path, opts: kvs::Options, cfg: ServeConfig) -> Res<u8> {
    let store = crate::open(dir, true, opts.clone())?;
    serve(store, opts, cfg)
}

/// The admin listener: `GET /metrics` and `GET /stats`, until the runtime stops.
async fn run_admin(state: Arc<State>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                log::warn!("admin accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(admin(state, req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("admin connection from {peer}: {e}");
            }
        });
    }
}

async fn admin(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let path = req.uri().path().to_string();
    let (kind, body) = match path.as_str() {
        "/metrics" => {
            let st = state.clone();
            let stats = blocking(move || Ok(st.store.stats())).await;
            match stats {
                Ok(s) => (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    state.metrics.encode(&s, state.held_bytes()),
                ),
                Err(e) => return failed(&e),
            }
        }
        "/stats" => {
            let st = state.clone();
            let json = blocking(move || {
                let store = crate::stat::stat_json(&st.store, st.store.path(), &st.opts);
                Ok(serde_json::json!({
                    "store": store,
                    "server": st.metrics.json(st.held_bytes()),
                    "directory_view_keys": st.dirs.len(),
                }))
            })
            .await;
            match json {
                Ok(j) => ("application/json", format!("{j:#}\n")),
                Err(e) => return failed(&e),
            }
        }
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "the admin listener serves /metrics and /stats",
            )
        }
    };
    let mut r = reply(StatusCode::OK, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_like_nginx() {
        assert_eq!(key_of("/sv01/ab/cd/a+b=").unwrap(), b"/sv01/ab/cd/a+b=");
        assert_eq!(key_of("/a%20b%2F%00").unwrap(), b"/a b/\0");
        assert_eq!(key_of("/bad%2"), None);
        assert_eq!(key_of("/bad%zz"), None);
    }

    #[test]
    fn ranges() {
        let h = |s: &str| Some(HeaderValue::from_str(s).unwrap());
        assert_eq!(range(h("bytes=0-9").as_ref(), 100), Ok(Some((0, 10))));
        assert_eq!(range(h("bytes=90-").as_ref(), 100), Ok(Some((90, 100))));
        assert_eq!(range(h("bytes=-10").as_ref(), 100), Ok(Some((90, 100))));
        assert_eq!(range(h("bytes=-1000").as_ref(), 100), Ok(Some((0, 100))));
        assert_eq!(range(h("bytes=95-200").as_ref(), 100), Ok(Some((95, 100))));
        assert_eq!(range(h("bytes=100-").as_ref(), 100), Err(()));
        // An empty value: no range can be satisfied (a suffix range once underflowed).
        assert_eq!(range(h("bytes=-5").as_ref(), 0), Err(()));
        assert_eq!(range(h("bytes=0-").as_ref(), 0), Err(()));
        assert_eq!(range(None, 0), Ok(None));
        assert_eq!(range(h("bytes=-0").as_ref(), 100), Err(()));
        assert_eq!(range(h("bytes=5-2").as_ref(), 100), Ok(None));
        assert_eq!(range(h("bytes=0-1,5-6").as_ref(), 100), Ok(None));
        assert_eq!(range(h("items=0-1").as_ref(), 100), Ok(None));
        assert_eq!(range(None, 100), Ok(None));
        assert_eq!(range(h("bytes=0-").as_ref(), 0), Err(()));
    }
}
