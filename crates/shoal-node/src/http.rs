//! The node's HTTP side: `/.well-known/shoal.json` (how a page finds this node),
//! `/metrics`, and the demo page with the npm package it loads.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use shoal_proto::{WELL_KNOWN_PATH, WellKnown};
use tower_http::{
    cors::CorsLayer,
    services::{ServeDir, ServeFile},
    set_header::SetResponseHeaderLayer,
};

use crate::NodeError;

/// What one client may hold of the HTTP server, and for how long.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections open at once, in all and per client address. Past either, a new
    /// connection is closed at once.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Time to send a request's head (and how long a kept-alive connection may idle).
    pub header_timeout: Duration,
    /// Longest life of one connection.
    pub max_lifetime: Duration,
}

/// Counters of what the HTTP limits refused.
#[derive(Debug, Default, Clone)]
pub struct HttpRefusals {
    pub total: prometheus_client::metrics::counter::Counter,
    pub per_ip: prometheus_client::metrics::counter::Counter,
}

/// State shared between the swarm task and HTTP handlers.
#[derive(Clone)]
pub struct Shared {
    pub well_known: Arc<RwLock<WellKnown>>,
    pub registry: Arc<Registry>,
    /// ICE servers for the well-known document (TURN credentials minted per request).
    pub ice: Arc<RwLock<crate::ice::IcePolicy>>,
    /// Set while the node drains before exiting: `/healthz` says 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Binds the HTTP listener now (so a busy port fails start-up) and returns the server
/// future with the bound address.
pub async fn bind(
    addr: SocketAddr,
    static_dir: &Path,
    shared: Shared,
    extra: Router,
    limits: HttpLimits,
    refusals: HttpRefusals,
) -> Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>> + use<>), NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Io { context: format!("binding HTTP listener on {addr}"), source })?;
    let bound =
        listener.local_addr().map_err(|source| NodeError::Io { context: "reading HTTP address".into(), source })?;

    // Only the demo page and what it loads are served: never the rest of the directory.
    let static_files = Router::new()
        .route_service("/", ServeFile::new(static_dir.join("index.html")))
        .route_service("/index.html", ServeFile::new(static_dir.join("index.html")))
        .nest_service("/pkg", ServeDir::new(static_dir.join("pkg")))
        .nest_service("/web", ServeDir::new(static_dir.join("web")))
        // The page and the package change together during development; never serve stale.
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));

    let app = Router::new()
        .route(WELL_KNOWN_PATH, get(well_known))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .with_state(shared)
        .merge(extra)
        .merge(static_files)
        // Pages on other origins may use this node: the well-known document is public.
        .layer(CorsLayer::permissive());

    Ok((bound, serve(listener, app, limits, refusals)))
}

/// For a load balancer: 200 while the node takes pages, 503 while it drains.
async fn health(State(shared): State<Shared>) -> impl IntoResponse {
    if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// A slot of one client address, given back on drop.
struct IpSlot {
    ip: IpAddr,
    slots: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl IpSlot {
    fn take(slots: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = slots.lock().ok()?;
        let count = map.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self { ip, slots: slots.clone() })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.slots.lock()
            && let Some(count) = map.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` with HTTP/1.1, within `limits`: a client that sends its
/// headers slowly, holds connections without using them, or opens too many, loses them.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    refusals: HttpRefusals,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        service::TowerToHyperService,
    };
    let total = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Requests here are small; hyper's default buffer lets one slow client pin 400 KB.
        .max_buf_size(16 * 1024)
        .max_headers(64);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or the like: wait rather than spin.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            refusals.total.inc();
            continue;
        };
        let Some(slot) = IpSlot::take(&per_ip, peer.ip(), limits.max_connections_per_ip) else {
            refusals.per_ip.inc();
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let lifetime = limits.max_lifetime;
        tokio::spawn(async move {
            let _held = (permit, slot);
            let _ = stream.set_nodelay(true);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            if tokio::time::timeout(lifetime, connection.as_mut()).await.is_err() {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
            }
        });
    }
}

async fn well_known(State(shared): State<Shared>) -> impl IntoResponse {
    let doc = shared.well_known.read().map(|w| w.clone());
    let ice = shared.ice.read().map(|ice| ice.for_page());
    match (doc, ice) {
        (Ok(mut doc), Ok(ice)) => {
            doc.ice_servers = ice;
            // TURN credentials are per page and expire: never from a cache.
            ([(header::CACHE_CONTROL, "no-store")], Json(doc)).into_response()
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
