//! The HTTP listener (`http-port`, off by default; `http-interface`,
//! loopback by default): `/metrics` (Prometheus text), `/health` and
//! `/ready` for probes, and the cluster status page `/` with the
//! `/status.json` it reads ([`crate::status`]).
//!
//! It runs on a thread of its own with a current-thread tokio runtime, so it
//! never shares a CPU slot with a shard's executor, and it reads only what
//! the shards publish to the [`StatsHandle`] every 250 ms: a scrape costs the
//! data path nothing.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tandem_shards::stats::StatsHandle;

use crate::metrics::{self, BrokerIdentity, Scrape};

/// A shard that has not published its counters for this long is taken as
/// stuck: `/health` answers 503.
const STALE_AFTER: Duration = Duration::from_secs(5);
/// HTTP connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

struct State {
    who: BrokerIdentity,
    stats: StatsHandle,
    /// The cluster as the status thread last gathered it.
    cluster: crate::status::Shared,
}

/// The status page: one static file, no build step, no framework.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves `listener` (already bound, so that a bad address fails the start)
/// on a thread named `http`.
pub fn start(
    listener: TcpListener,
    who: BrokerIdentity,
    stats: StatsHandle,
    gathering: crate::status::Gathering,
) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("http-port: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("http-port: cannot start the HTTP runtime: {e}"))?;
    let cluster = crate::status::start(gathering)?;
    let state = Arc::new(State {
        who,
        stats,
        cluster,
    });
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(serve(listener, state)))
        .map(|_| ())
        .map_err(|e| format!("http-port: cannot start the HTTP thread: {e}"))
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("HTTP listener failed: {e}");
            return;
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropped: closes it
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (state, open) = (state.clone(), open.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("HTTP connection ended: {e}");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let scrape = Scrape::now(&state.stats);
    match req.uri().path() {
        "/metrics" => match metrics::render(&state.who, &scrape) {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Err(e) => {
                tracing::warn!("/metrics: {e}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
        },
        "/" => {
            let mut r = text(StatusCode::OK, STATUS_PAGE.to_owned());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/status.json" => {
            let status = state
                .cluster
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match serde_json::to_string(&status) {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/health" => match unhealthy(&scrape) {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/ready" => {
            let status = scrape.status();
            match unhealthy(&scrape) {
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                None if ready(status) => text(StatusCode::OK, format!("{status}\n")),
                None => text(StatusCode::SERVICE_UNAVAILABLE, format!("{status}\n")),
            }
        }
        path => text(
            StatusCode::NOT_FOUND,
            format!("no {path} here: /, /status.json, /metrics, /health and /ready are\n"),
        ),
    }
}

/// Why the broker is not healthy: a shard that stopped publishing.
fn unhealthy(scrape: &Scrape) -> Option<String> {
    let stale = scrape.stale_shards(STALE_AFTER);
    (!stale.is_empty()).then(|| {
        let list: Vec<String> = stale.iter().map(|s| s.to_string()).collect();
        format!(
            "shard {} has not reported its counters for over {}s (stuck, or not started)",
            list.join(", "),
            STALE_AFTER.as_secs()
        )
    })
}

/// Ready: serving as a stand-alone broker or the active primary, or a hot
/// backup that could take over.
pub fn ready(status: &str) -> bool {
    matches!(status, "standalone" | "active" | "ready")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
