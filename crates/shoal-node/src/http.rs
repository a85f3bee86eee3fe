//! The node's HTTP side: `/.well-known/shoal.json` (how a page finds this node),
//! `/metrics`, and the demo page with the npm package it loads.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, RwLock},
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

/// State shared between the swarm task and HTTP handlers.
#[derive(Clone)]
pub struct Shared {
    pub well_known: Arc<RwLock<WellKnown>>,
    pub registry: Arc<Registry>,
}

/// Binds the HTTP listener now (so a busy port fails start-up) and returns the server
/// future with the bound address.
pub async fn bind(
    addr: SocketAddr,
    static_dir: &Path,
    shared: Shared,
    extra: Router,
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
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
        .merge(extra)
        .merge(static_files)
        // Pages on other origins may use this node: the well-known document is public.
        .layer(CorsLayer::permissive());

    Ok((bound, async move { axum::serve(listener, app).await }))
}

async fn well_known(State(shared): State<Shared>) -> impl IntoResponse {
    let doc = shared.well_known.read().map(|w| w.clone());
    match doc {
        Ok(doc) => Json(doc).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
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
