//! The dashboard's HTTP side: the page, its live sections, a server-sent event each time
//! the state changes (at most every [`REDRAW_EVERY`]), and the state as JSON.

use super::{Dashboard, REDRAW_EVERY};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use fedretail_core::BoxFuture;
use std::convert::Infallible;
use std::sync::Arc;

/// Redraws the page when told the state changed; one fetch at a time, and one more
/// if a change came in meanwhile, so the last state is always shown.
const SCRIPT: &str = r#"<script>
(() => {
  let busy = false, again = false, latest = '';
  async function redraw() {
    if (busy) { again = true; return; }
    busy = true;
    const version = latest;
    try {
      const r = await fetch('/live', {cache: 'no-store'});
      if (r.ok) {
        document.getElementById('page').innerHTML = await r.text();
        document.body.dataset.version = version;
      }
    } catch (e) {
      document.body.dataset.connection = 'lost';
    } finally {
      busy = false;
      if (again) { again = false; redraw(); }
    }
  }
  const events = new EventSource('/events');
  events.onmessage = (e) => { latest = e.data; redraw(); };
  events.onopen = () => { document.body.dataset.connection = 'live'; };
  events.onerror = () => { document.body.dataset.connection = 'lost'; };
})();
</script>"#;

fn routes(dashboard: Arc<Dashboard>) -> axum::Router {
    let page = dashboard.clone();
    let live = dashboard.clone();
    let state = dashboard.clone();
    axum::Router::new()
        .route(
            "/",
            get(move || async move { Html(page.page().document("", SCRIPT)) }),
        )
        .route(
            "/live",
            get(move || async move { Html(live.page().body_html()) }),
        )
        .route(
            "/api/state",
            get(move || async move {
                let json = state.state_json();
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
                    .into_response()
            }),
        )
        .route("/events", get(move || async move { events(&dashboard) }))
}

fn events(
    dashboard: &Dashboard,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let mut rx = dashboard.version.subscribe();
    // The first event goes out at once, in case the state moved since the page loaded.
    rx.mark_changed();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let version = *rx.borrow_and_update();
        tokio::time::sleep(REDRAW_EVERY).await;
        Some((Ok(Event::default().data(version.to_string())), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Serves the dashboard on `listener` until the future is dropped.
pub fn serve_dashboard(
    listener: tokio::net::TcpListener,
    dashboard: Arc<Dashboard>,
) -> BoxFuture<'static, std::io::Result<()>> {
    Box::pin(async move { axum::serve(listener, routes(dashboard)).await })
}
