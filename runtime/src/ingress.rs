//! HTTP ingress: producer endpoints that publish events, the health and
//! readiness probes, and `/metrics`.
//!
//! Errors are `application/problem+json` documents (RFC 9457).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, on};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::dispatch::{PublishError, Publisher};
use crate::event::{Event, is_json_content_type};
use crate::schema::{SchemaCheck, Schemas};
use crate::telemetry::{self, Readiness};
use crate::trace::{TRACEPARENT, TRACESTATE, TraceParent};

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: u64 = 5;

/// One HTTP endpoint that publishes an event type.
#[derive(Clone, Debug)]
pub struct Producer {
    pub name: String,
    pub method: Method,
    pub path: String,
    pub event_type: String,
    /// Data field that receives the event id when the request leaves it out.
    pub id_field: Option<String>,
    /// CloudEvents `source` of the events it publishes.
    pub source: String,
}

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct Ingress {
    pub publisher: Publisher,
    pub schemas: Schemas,
    pub readiness: Readiness,
    pub metrics: Option<PrometheusHandle>,
    pub body_limit: usize,
}

/// Builds the router: one route per producer plus the runtime's endpoints.
pub fn router(ingress: Ingress, producers: Vec<Producer>) -> Router {
    let body_limit = ingress.body_limit;
    let state = Arc::new(ingress);
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics));
    for producer in producers {
        let path = producer.path.clone();
        let method = producer.method.clone();
        let producer = Arc::new(producer);
        let route: MethodRouter<Arc<Ingress>> = on(
            axum::routing::MethodFilter::try_from(method)
                .unwrap_or(axum::routing::MethodFilter::POST),
            move |State(state): State<Arc<Ingress>>,
                  headers: HeaderMap,
                  body: Result<Bytes, BytesRejection>| {
                let producer = producer.clone();
                async move { produce(&state, &producer, &headers, body).await }
            },
        );
        router = router.route(&path, route);
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<Ingress>>) -> Response {
    let (ready, checks) = state.readiness.snapshot();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}

async fn render_metrics(State(state): State<Arc<Ingress>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Not Found",
        "no route for this path",
        None,
    )
}

/// Handles one producer request: checks, envelope, validation, confirmed publish.
async fn produce(
    state: &Ingress,
    producer: &Producer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match accept(state, producer, headers, body).await {
        Ok(event) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": event.id, "type": event.event_type })),
        )
            .into_response(),
        Err(response) => response,
    };
    if !response.status().is_success() {
        metrics::counter!(
            telemetry::HTTP_REJECTED,
            "producer" => producer.name.clone(),
            "status" => response.status().as_u16().to_string()
        )
        .increment(1);
    }
    response
}

async fn accept(
    state: &Ingress,
    producer: &Producer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Event, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !is_json_content_type(content_type) {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            &format!(
                "content type `{content_type}` is not JSON; send `Content-Type: application/json`"
            ),
            None,
        ));
    }
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "body is larger than the limit of {} bytes",
                state.body_limit
            )
        } else {
            rejection.body_text()
        };
        let mut response = problem(
            status,
            status.canonical_reason().unwrap_or("Bad Request"),
            &detail,
            None,
        );
        // The unread rest of the body is still on the connection, so the
        // server closes it. The header tells keep-alive clients not to reuse it.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    })?;
    let mut data: Value = serde_json::from_slice(&body).map_err(|err| {
        if err.to_string().contains("recursion limit") {
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unprocessable Content",
                "JSON nesting is deeper than the limit of 128 levels",
                None,
            )
        } else {
            problem(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                &format!("body is not valid JSON: {err}"),
                None,
            )
        }
    })?;

    let mut event = Event::new(&producer.event_type, &producer.source, Value::Null);
    if let (Some(field), Value::Object(object)) = (&producer.id_field, &mut data)
        && !object.contains_key(field)
    {
        object.insert(field.clone(), Value::String(event.id.clone()));
    }
    if let Err(check) = state.schemas.validate(&producer.event_type, &data) {
        let errors = match check {
            SchemaCheck::Invalid(violations) => violations,
            SchemaCheck::UnknownType(_) => Vec::new(),
        };
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unprocessable Content",
            &format!("body fails the schema of `{}`", producer.event_type),
            Some(json!(errors)),
        ));
    }
    event.data = data;
    attach_trace_context(&mut event, headers);

    state.publisher.publish(&event).await.map_err(|err| {
        tracing::warn!(producer = %producer.name, event_id = %event.id, error = %err, "publish failed");
        match err {
            PublishError::Broker(err) if err.is_transient() => unavailable(&err.to_string()),
            PublishError::NoBroker(_) => unavailable(&err.to_string()),
            other => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                &other.to_string(),
                None,
            ),
        }
    })?;
    Ok(event)
}

/// Puts the trace context of the request on the event: a child of the
/// request's valid `traceparent` with its `tracestate`, else a new trace.
fn attach_trace_context(event: &mut Event, headers: &HeaderMap) {
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let parent = header_text(TRACEPARENT).and_then(TraceParent::parse);
    let context = match parent {
        Some(parent) => {
            if let Some(state) = header_text(TRACESTATE).filter(|state| !state.is_empty()) {
                event.extensions.insert(TRACESTATE.into(), state.to_owned());
            }
            parent.child()
        }
        None => TraceParent::new_root(),
    };
    event
        .extensions
        .insert(TRACEPARENT.into(), context.to_string());
}

fn unavailable(detail: &str) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        &format!("{detail}; nothing was published, retry later"),
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// Builds an RFC 9457 problem response.
fn problem(status: StatusCode, title: &str, detail: &str, errors: Option<Value>) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(errors) = errors {
        body["errors"] = errors;
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
