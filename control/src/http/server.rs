//! The HTTP/1 server loop under the REST API: accept, limit, serve, drain.
//!
//! `axum::serve` has no header read timeout, so a client that sends its headers one byte at a
//! time (slowloris) holds a connection and a task for as long as it likes. Here each
//! connection is served by hyper's HTTP/1 builder with `header_read_timeout`, which closes a
//! connection whose request headers have not all arrived in time; the same timer closes idle
//! keep-alive connections, because it starts whenever the server waits for a request. Bodies
//! have their own timeout in the JSON extractor (408 with a JSON error). And a client IP
//! address may hold at most `max_connections_per_ip` connections: more are closed on accept,
//! before any byte is read, and counted in `bosonserver_http_connections_refused_total`.
//!
//! With a certificate (`--api-cert`/`--api-key`) every connection is TLS (rustls, ring) and
//! must finish its handshake within the header read timeout too; the certificate files are
//! checked for a change every `reload_interval` by `boson-tls`'s reloader, the same code as
//! the relay's wss, and a new pair serves the connections accepted after it. Without one, an
//! API on a non-loopback address logs one loud warning at start: tokens would cross the
//! network in clear.
//!
//! Behind `--trusted-proxies` ([`crate::domain::client_addr`]): a connection from a
//! trusted address may start with a PROXY protocol v2 header, whose source then is the
//! connection's address (its connection cap included; a trusted proxy's own connections carry
//! many clients and have no cap); and each request from a trusted address has its client
//! taken from `Forwarded` or `X-Forwarded-For`, handed to the handlers as `ConnectInfo` (rate
//! limits, `publicIp`). A malformed header from a trusted proxy gets 400
//! `invalid_forwarded_header`; from anyone else the headers are not looked at.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::AppState;
use crate::config::HttpLimits;
use crate::domain::client_addr::{
    self, ForwardedError, PROXY_V2_FIXED_LEN, PROXY_V2_SIGNATURE, ProxyHeader,
};
use crate::http::error::ApiError;
use axum::response::IntoResponse as _;

/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest request head (request line and headers). A node's requests carry one bearer token
/// of a few hundred bytes; hyper's own default (about 400 KiB) would let a client make the
/// server buffer far more. Over it, hyper answers 431 and closes.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `state`'s router on `listener` until `shutdown` completes, then lets open requests
/// finish and returns.
pub(crate) async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.http;
    let router = state.router();
    let trusted: Arc<[boson_shared::Cidr]> = state.config.trusted_proxies.clone().into();
    let tls = match &state.config.api_tls {
        Some(api_tls) => {
            let reloader = boson_tls::Reloader::new(api_tls.source.clone(), "API")
                .map(Arc::new)
                .map_err(std::io::Error::other)?;
            let stop = boson_tls::spawn_reloader(Arc::clone(&reloader), api_tls.reload_interval)?;
            Some((reloader, stop))
        }
        None => {
            let local = listener.local_addr()?;
            if !local.ip().is_loopback() {
                tracing::warn!(
                    listen = %local,
                    "THE REST API SERVES PLAIN HTTP ON A NON-LOOPBACK ADDRESS: node tokens and \
                     registrations cross the network in clear. Set --api-cert and --api-key \
                     (BOSON_API_CERT, BOSON_API_KEY), or put a TLS-terminating proxy in front \
                     and listen on loopback"
                );
            }
            None
        }
    };
    let per_ip = ConnectionLimiter::new(limits.max_connections_per_ip);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("accepting an HTTP connection failed: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let from_proxy = client_addr::is_trusted(&trusted, peer.ip());
        // A trusted proxy's connections carry many clients: capped by the PROXY header's
        // source if there is one, else not at all.
        let permit = if from_proxy {
            None
        } else {
            let Some(permit) = per_ip.try_acquire(peer.ip()) else {
                tracing::debug!(%peer, "too many connections from this address: closed");
                state.metrics.count_refused_connection();
                drop(stream);
                continue;
            };
            Some(permit)
        };
        let per_ip = per_ip.clone();
        let task_state = state.clone();
        let trusted = Arc::clone(&trusted);
        let router = router.clone();
        let stop = stop_rx.clone();
        let acceptor = tls
            .as_ref()
            .map(|(reloader, _)| tokio_rustls::TlsAcceptor::from(reloader.config()));
        connections.spawn(async move {
            let mut permit = permit;
            let mut stream = stream;
            let mut peer = peer;
            if from_proxy {
                let header = tokio::time::timeout(
                    limits.header_read_timeout,
                    read_proxy_header(&mut stream),
                )
                .await;
                match header {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(source))) => {
                        let Some(slot) = per_ip.try_acquire(source.ip()) else {
                            tracing::debug!(%source, "too many connections from this address");
                            task_state.metrics.count_refused_connection();
                            return;
                        };
                        permit = Some(slot);
                        peer = source;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, "PROXY protocol header refused: {error}");
                        return;
                    }
                    Err(_) => return,
                }
            }
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                serve_connection(stream, peer, router, limits, stop, trusted).await;
                return;
            };
            // The handshake counts against the header timeout: a client that never finishes
            // it holds its slot no longer than one that never sends its headers.
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(stream, peer, router, limits, stop, trusted).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    drop(tls);
    Ok(())
}

/// Reads a PROXY protocol v2 header if the connection starts with one: its source (`None`
/// for a `LOCAL` header or none at all). Only bytes of a header are consumed.
async fn read_proxy_header(
    stream: &mut tokio::net::TcpStream,
) -> std::io::Result<Option<SocketAddr>> {
    use tokio::io::AsyncReadExt as _;
    let mut fixed = [0u8; PROXY_V2_FIXED_LEN];
    loop {
        let seen = stream.peek(&mut fixed).await?;
        let prefix = seen.min(PROXY_V2_SIGNATURE.len());
        if seen == 0 || fixed[..prefix] != PROXY_V2_SIGNATURE[..prefix] {
            return Ok(None);
        }
        if seen == PROXY_V2_FIXED_LEN {
            break;
        }
        // Part of a header so far: wait for the rest (the caller's timeout bounds this).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let len = client_addr::proxy_v2_len(&fixed).unwrap_or(PROXY_V2_FIXED_LEN);
    let mut header = vec![0u8; len];
    stream.read_exact(&mut header).await?;
    match client_addr::parse_proxy_v2(&header) {
        Ok(ProxyHeader::Proxied { source }) => Ok(Some(source)),
        Ok(ProxyHeader::Local) => Ok(None),
        Err(error) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
    }
}

/// The client of one request from `peer`: `peer` unless it is a trusted proxy, else what
/// `Forwarded` (first) or `X-Forwarded-For` say.
fn forwarded_client(
    peer: SocketAddr,
    trusted: &[boson_shared::Cidr],
    headers: &hyper::HeaderMap,
) -> Result<SocketAddr, ForwardedError> {
    if !client_addr::is_trusted(trusted, peer.ip()) {
        return Ok(peer);
    }
    let values = |name: &'static str| {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str())
            .collect::<Result<Vec<&str>, _>>()
            .map_err(|_| ForwardedError::Malformed {
                header: name,
                detail: "not visible ASCII".to_owned(),
            })
    };
    let (header, hops) = if headers.contains_key("forwarded") {
        (
            "Forwarded",
            client_addr::parse_forwarded(values("forwarded")?)?,
        )
    } else if headers.contains_key("x-forwarded-for") {
        (
            "X-Forwarded-For",
            client_addr::parse_x_forwarded_for(values("x-forwarded-for")?)?,
        )
    } else {
        return Ok(peer);
    };
    let ip = client_addr::client_ip(peer.ip(), trusted, &hops, header)?;
    // A forwarded client has no port this server knows.
    Ok(if ip == peer.ip() {
        peer
    } else {
        SocketAddr::new(ip, 0)
    })
}

/// Serves HTTP/1 on one accepted connection (plain or TLS) until it ends or the server stops.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: axum::Router,
    limits: HttpLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    trusted: Arc<[boson_shared::Cidr]>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let client = forwarded_client(peer, &trusted, request.headers());
        let router = router.clone();
        async move {
            match client {
                Ok(client) => {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(client));
                    router.oneshot(request).await
                }
                Err(error) => Ok(ApiError::bad_request(
                    "invalid_forwarded_header",
                    error.to_string(),
                )
                .with_field(error.header())
                .into_response()),
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let stopping = async move {
        // An error means the server is gone: stop as well.
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%peer, "HTTP connection ended: {error}");
    }
}

/// Counts open connections per IP address. Only point lookups: the map is never iterated.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimiter {
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
    limit: u32,
}

/// One open connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limiter: ConnectionLimiter,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            open: Arc::new(Mutex::new(HashMap::new())),
            limit,
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it already holds the limit.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> Option<ConnectionPermit> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            limiter: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.lock();
        if let Entry::Occupied(mut entry) = open.entry(self.ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_slots_back_when_connections_close() {
        let limiter = ConnectionLimiter::new(2);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limiter.try_acquire(a).unwrap();
        let _second = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none());
        let _other = limiter.try_acquire(b).unwrap();
        drop(first);
        let _third = limiter.try_acquire(a).unwrap();
        assert!(limiter.try_acquire(a).is_none());
        assert_eq!(limiter.lock().len(), 2);
        drop((_second, _third, _other));
        assert!(
            limiter.lock().is_empty(),
            "no entry outlives its connections"
        );
    }
}
