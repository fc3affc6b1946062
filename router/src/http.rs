//! The operator endpoints: `/health` (the process is up), `/ready` (a cluster map is loaded,
//! so requests can be routed) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::map_cache::MapCache;
use crate::metrics::Metrics;

#[derive(Clone)]
struct HttpState {
    maps: Arc<MapCache>,
    metrics: Arc<Metrics>,
    tls: Option<Arc<kv_proto::tls::TlsCerts>>,
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    maps: Arc<MapCache>,
    metrics: Arc<Metrics>,
    tls: Option<Arc<kv_proto::tls::TlsCerts>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { maps, metrics, tls });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.maps.current() {
        Some(map) => (
            StatusCode::OK,
            format!("ready (cluster map epoch {})\n", map.map.epoch),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no cluster map loaded yet\n".to_string(),
        ),
    }
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    if let Some(tls) = &state.tls {
        tls.stats.write_metrics(&mut text, "kvrouter");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
