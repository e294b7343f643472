//! `/metrics`: every decision of the layers, in the Prometheus text format
//! (`metrics-exporter-prometheus`). The route sits beside the app, outside its layers: it is
//! never shed, drained or put into maintenance, so monitoring keeps working while the service
//! refuses.

use std::net::SocketAddr;

use axum::{routing::get, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder. Called before the app is built: a layer registers its
/// metrics with the recorder installed when it first needs them.
pub(crate) fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other metrics recorder is installed");
    tower_5xx::metrics::describe();
    handle
}

pub(crate) fn routes(handle: PrometheusHandle) -> Router {
    Router::new().route("/metrics", get(move || std::future::ready(handle.render())))
}

pub(crate) fn print_help(addr: SocketAddr) {
    println!("Metrics (Prometheus text; never shed, drained or in maintenance):");
    println!("  curl -s http://{addr}/metrics | grep tower_5xx   # generated responses by status and reason, ...");
}
