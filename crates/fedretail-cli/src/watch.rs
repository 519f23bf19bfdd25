//! What a person or a monitoring system watches while jobs run: the live dashboard and
//! the Prometheus endpoint, each on its own address, and the HTML reports left after.

use anyhow::{Context, Result};
use fedretail_coordinator::{serve_dashboard, serve_metrics, Dashboard, Metrics};
use fedretail_core::BoxFuture;
use std::path::Path;
use std::sync::Arc;

async fn bind(addr: &str, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for the {what} on {addr}"))
}

/// A server to run beside the jobs; a future that never ends when it is off.
pub(crate) type Server = BoxFuture<'static, std::io::Result<()>>;

fn off() -> Server {
    Box::pin(std::future::pending())
}

/// Binds the dashboard's address (when given) and says where to look.
pub(crate) async fn dashboard_server(
    addr: Option<&str>,
    dashboard: Arc<Dashboard>,
) -> Result<Server> {
    let Some(addr) = addr else {
        return Ok(off());
    };
    let listener = bind(addr, "dashboard").await?;
    eprintln!("dashboard at http://{}/", listener.local_addr()?);
    Ok(serve_dashboard(listener, dashboard))
}

/// Binds the metrics address (when given) and says where to scrape.
pub(crate) async fn metrics_server(addr: Option<&str>, metrics: Arc<Metrics>) -> Result<Server> {
    let Some(addr) = addr else {
        return Ok(off());
    };
    let listener = bind(addr, "metrics").await?;
    eprintln!("metrics at http://{}/metrics", listener.local_addr()?);
    Ok(Box::pin(serve_metrics(listener, metrics)))
}

/// Writes an HTML report and its figures and says where.
pub(crate) fn write_page(page: &fedretail_report::Page, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = page.write(path)?;
    eprintln!(
        "report: {} ({} charts beside it)",
        path.display(),
        files.len().saturating_sub(1)
    );
    Ok(())
}
