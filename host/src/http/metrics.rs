//! Prometheus metrics (`/metrics`): HTTP requests by route and status with their latency,
//! agents' requests by outcome, guardians' decisions, open push streams.
//!
//! Lifetimes: [`Metrics`] is process-wide; the HTTP middleware and handlers update it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    status: String,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RouteLabels, Counter>,
    http_seconds: Family<RouteOnly, Histogram>,
    approval_requests: Family<Outcome, Counter>,
    decisions: Counter,
    push_streams: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("approval_host");
        let http_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        let http_seconds = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until the response starts)",
            http_seconds.clone(),
        );
        let approval_requests = Family::<Outcome, Counter>::default();
        registry.register(
            "approval_requests",
            "Agents' requests by the status they were answered with",
            approval_requests.clone(),
        );
        let decisions = Counter::default();
        registry.register(
            "guardian_decisions",
            "Guardians' decisions that won",
            decisions.clone(),
        );
        let push_streams = Gauge::default();
        registry.register(
            "push_streams",
            "Guardians' inbox streams open now",
            push_streams.clone(),
        );
        Self {
            registry,
            http_requests,
            http_seconds,
            approval_requests,
            decisions,
            push_streams,
        }
    }

    /// An agent's request answered with `status`.
    pub fn request_answered(&self, status: &str) {
        self.approval_requests
            .get_or_create(&Outcome {
                status: status.to_owned(),
            })
            .inc();
    }

    /// A guardian's decision won.
    pub fn decided(&self) {
        self.decisions.inc();
    }

    /// A push stream opened.
    pub fn stream_opened(&self) {
        self.push_streams.inc();
    }

    /// A push stream ended.
    pub fn stream_closed(&self) {
        self.push_streams.dec();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The label of a request's method: one of the methods the HTTP RFCs define, or `other`, so a
/// caller cannot add label values (and series) by inventing methods.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// Counts and times every request by its route template (never by raw path: ids stay out of
/// label values).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_seconds
        .get_or_create(&RouteOnly {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .get_or_create(&RouteLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::method_label;
    use axum::http::Method;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for invented in ["FOO123", "BREW", "get"] {
            let method = Method::from_bytes(invented.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other", "{invented}");
        }
    }
}
