//! The HTTP listener (`http-port`, off by default; `http-interface`,
//! loopback by default): `/metrics` (Prometheus text), `/health` and
//! `/ready` for probes, and the cluster status page `/` with the
//! `/status.json` it reads ([`crate::status`]).
//!
//! It runs on a thread of its own with a current-thread tokio runtime, so it
//! never shares a CPU slot with a shard's executor, and it reads only what
//! the shards publish to the [`StatsHandle`] every 250 ms: a scrape costs the
//! data path nothing.
//!
//! It takes the broker's own checks ([`Guard`]): with `ssl-cert-file` the
//! port speaks HTTPS only, with the AMQP port's certificate (reloaded on
//! SIGHUP) and client-certificate rules; with `auth = yes` every page but
//! `/health` and `/ready` asks for HTTP Basic credentials from the users
//! file, or takes a verified client certificate as `CN@realm` (as SASL
//! EXTERNAL does); with an ACL the user must be allowed `access broker`.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tandem_shards::access::{Access, AccessPolicy, Principal};
use tandem_shards::stats::StatsHandle;
use tandem_shards::users::UserDb;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{self, BrokerIdentity, Scrape};

/// A shard that has not published its counters for this long is taken as
/// stuck: `/health` answers 503.
const STALE_AFTER: Duration = Duration::from_secs(5);
/// HTTP connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker's checks, applied to the HTTP port as to the AMQP ports.
pub struct Guard {
    /// The broker's TLS server configuration (`ssl-cert-file`): the port
    /// then speaks HTTPS only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `auth = yes`: the users whose Basic credentials are accepted.
    pub users: Option<Arc<UserDb>>,
    /// The realm of a client certificate's identity, `CN@realm`.
    pub realm: String,
    /// The ACL (or allow-all): a user must be allowed to connect and to
    /// read the broker.
    pub access: Arc<dyn AccessPolicy>,
}

struct State {
    who: BrokerIdentity,
    stats: StatsHandle,
    /// The cluster as the status thread last gathered it.
    cluster: crate::status::Shared,
    guard: Guard,
}

/// One HTTP connection's client.
struct Peer {
    addr: String,
    /// From a verified TLS client certificate: `CN@realm`.
    certificate_user: Option<String>,
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
    guard: Guard,
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
        guard,
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
    let acceptor = state.guard.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
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
        let (state, open, acceptor) = (state.clone(), open.clone(), acceptor.clone());
        tokio::spawn(async move {
            let addr = from.to_string();
            match acceptor {
                None => {
                    let peer = Peer {
                        addr,
                        certificate_user: None,
                    };
                    serve_connection(stream, state, peer).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let certificate_user = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|cert| tandem_shards::tls::subject_common_name(cert))
                                .map(|cn| format!("{cn}@{}", state.guard.realm));
                            let peer = Peer {
                                addr,
                                certificate_user,
                            };
                            serve_connection(tls, state, peer).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!("HTTPS from {addr}: TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::info!(
                            "HTTPS from {addr}: no TLS handshake within {}s",
                            HEADER_TIMEOUT.as_secs()
                        ),
                    }
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Answers requests on one connection (plain or TLS) until it closes.
async fn serve_connection<I>(io: I, state: Arc<State>, peer: Peer)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let service = service_fn(move |req| {
        let (state, peer) = (state.clone(), peer.clone());
        async move { Ok::<_, Infallible>(answer(&state, &peer, &req)) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("HTTP connection ended: {e}");
    }
}

fn answer(state: &State, peer: &Peer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // Probes need no credentials: they learn only "up" and the HA status.
    let probe = matches!(req.uri().path(), "/health" | "/ready");
    if !probe {
        if let Err(refused) = authorise(&state.guard, peer, req) {
            return *refused;
        }
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

/// Whether `peer` may read the broker: who it is (a verified client
/// certificate, else Basic credentials when auth = yes, else anonymous),
/// then what the ACL says. The refusal to answer if not.
fn authorise(
    guard: &Guard,
    peer: &Peer,
    req: &Request<Incoming>,
) -> Result<(), Box<Response<Full<Bytes>>>> {
    let user = match (&guard.users, &peer.certificate_user) {
        (_, Some(cn)) => Some(cn.clone()),
        (None, None) => None,
        (Some(users), None) => match basic_credentials(req.headers().get(AUTHORIZATION)) {
            Ok(Some((user, password))) if users.current().check(&user, &password) => Some(user),
            Ok(Some((user, _))) => {
                tracing::warn!(
                    "HTTP from {}: authentication failed for user '{}'",
                    peer.addr,
                    tandem_shards::shown::shown(&user)
                );
                return Err(Box::new(unauthorized(
                    &guard.realm,
                    "wrong user name or password",
                )));
            }
            Ok(None) => {
                return Err(Box::new(unauthorized(
                    &guard.realm,
                    "auth = yes: log in with HTTP Basic credentials from the users file, or a client certificate",
                )))
            }
            Err(why) => return Err(Box::new(unauthorized(&guard.realm, why))),
        },
    };
    let who = Principal {
        user: user.as_deref(),
        peer: &peer.addr,
    };
    let read_broker = Access::Manage {
        operation: "READ",
        entity_type: "broker",
        name: None,
        durable: None,
    };
    guard
        .access
        .check(&who, &Access::Connect { properties: None })
        .and_then(|()| guard.access.check(&who, &read_broker))
        .map_err(|why| {
            tracing::warn!(
                "HTTP from {} as {}: refused: {why}",
                peer.addr,
                tandem_shards::shown::shown(user.as_deref().unwrap_or("anonymous"))
            );
            Box::new(text(StatusCode::FORBIDDEN, format!("{why}\n")))
        })
}

/// The user name and password of an `Authorization: Basic` header (RFC
/// 7617), `None` without one, or what is wrong with it.
fn basic_credentials(
    header: Option<&HeaderValue>,
) -> Result<Option<(String, String)>, &'static str> {
    let Some(value) = header else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let encoded = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
        _ => return Err("only Basic authorization is accepted"),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the Basic credentials are not base64")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "the Basic credentials are not UTF-8")?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or("the Basic credentials have no ':' between user and password")?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

fn unauthorized(realm: &str, why: &str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, format!("{why}\n"));
    let challenge = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(header: &str) -> Result<Option<(String, String)>, &'static str> {
        let value = HeaderValue::from_str(header).expect("a header value");
        basic_credentials(Some(&value))
    }

    #[test]
    fn basic_credentials_are_read_and_bad_ones_named() {
        assert_eq!(basic_credentials(None), Ok(None));
        // "admin:se:cret": the password may hold a colon; the scheme is any case.
        assert_eq!(
            parsed("basic YWRtaW46c2U6Y3JldA=="),
            Ok(Some(("admin".into(), "se:cret".into())))
        );
        assert_eq!(
            parsed("Bearer x"),
            Err("only Basic authorization is accepted")
        );
        assert_eq!(parsed("Basic"), Err("only Basic authorization is accepted"));
        assert_eq!(
            parsed("Basic !!!"),
            Err("the Basic credentials are not base64")
        );
        // "admin" with no colon; then the bytes ff fe.
        assert!(parsed("Basic YWRtaW4=").is_err_and(|e| e.contains("no ':'")));
        assert_eq!(
            parsed("Basic //4="),
            Err("the Basic credentials are not UTF-8")
        );
    }
}
