//! The agent's HTTP endpoint: `GET /metrics` and nothing else.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::sinks::metrics::expose;

/// Binds now (so a taken or forbidden address fails at start, with its reason) and returns the
/// listener to serve later.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for /metrics: {e} (choose another with --listen)")
    })
}

/// Serves the registry until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "connwatch serves /metrics\n") })
        .with_state(registry);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("connwatch: the /metrics server stopped: {e}");
    }
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = expose(&registry, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}
