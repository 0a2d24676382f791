//! The control plane's Prometheus metrics: latency of every API request (by API, method, route
//! and status) and of every database transaction (by backend and mode). Recorded always (an
//! atomic add or two per request); `tapestry control --metrics-listen` serves [`render`].

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    backend: &'static str,
    mode: &'static str,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    api: Hist<ApiLabels>,
    db: Hist<DbLabels>,
}

fn api_histogram() -> Histogram {
    // 1 ms to ~2 min (feed long-polls wait up to 120 s).
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

fn db_histogram() -> Histogram {
    // 50 µs to ~3 s.
    Histogram::new(exponential_buckets(0.00005, 2.5, 13))
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::default();
        let api: Hist<ApiLabels> = Family::new_with_constructor(api_histogram);
        let db: Hist<DbLabels> = Family::new_with_constructor(db_histogram);
        registry.register(
            "tapestry_control_api_request_duration_seconds",
            "Time to answer an API request (external or internal), by route and status",
            api.clone(),
        );
        registry.register(
            "tapestry_control_db_transaction_duration_seconds",
            "Time of one database transaction, by backend and mode",
            db.clone(),
        );
        Metrics { registry, api, db }
    })
}

/// Records one database transaction.
pub(crate) fn db_transaction(backend: &'static str, write: bool, took: Duration) {
    metrics()
        .db
        .get_or_create(&DbLabels {
            backend,
            mode: if write { "write" } else { "read" },
        })
        .observe(took.as_secs_f64());
}

async fn observe(api: &'static str, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    // The route as declared (`/networking/{version}/external/policies`), never the raw path:
    // the label set stays small whatever clients send.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| route_label(p.as_str()))
        .unwrap_or_else(|| "unmatched".into());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics()
        .api
        .get_or_create(&ApiLabels {
            api,
            method,
            route,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// A route template as a label value: `{param}` written `:param`
/// (`/networking/:version/external/policies`), which every text-format parser reads (some take
/// a `}` inside a label value for the end of the label set).
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// Middleware timing the external API's requests.
pub(crate) async fn observe_external(req: Request, next: Next) -> Response {
    observe("external", req, next).await
}

/// Middleware timing the internal API's requests.
pub(crate) async fn observe_internal(req: Request, next: Next) -> Response {
    observe("internal", req, next).await
}

/// Every metric in the OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_have_no_braces() {
        assert_eq!(
            route_label("/networking/{version}/external/security_groups/{name}"),
            "/networking/:version/external/security_groups/:name"
        );
        assert_eq!(route_label("/internal/feed"), "/internal/feed");
    }

    #[test]
    fn transactions_are_counted_by_mode() {
        db_transaction("sqlite", true, Duration::from_millis(2));
        db_transaction("sqlite", false, Duration::from_micros(70));
        let text = render();
        assert!(
            text.contains(
                "tapestry_control_db_transaction_duration_seconds_count{backend=\"sqlite\",mode=\"write\"}"
            ),
            "{text}"
        );
        assert!(text.contains("mode=\"read\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
