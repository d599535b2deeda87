//! HTTP ingress: producer endpoints that publish events, the health and
//! readiness probes, and `/metrics`.
//!
//! Errors are `application/problem+json` documents (RFC 9457).

pub mod auth;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, on};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

pub use auth::{Credential, Credentials, Scheme};
pub use server::{ConnectionTimeouts, serve};

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
    /// Names of the credentials it accepts, or `None` when it accepts
    /// requests without credentials.
    pub accepted_credentials: Option<Vec<String>>,
}

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct Ingress {
    pub publisher: Publisher,
    pub schemas: Schemas,
    pub readiness: Readiness,
    pub metrics: Option<PrometheusHandle>,
    pub limits: RequestLimits,
    pub credentials: Arc<Credentials>,
    /// `realm` of the `WWW-Authenticate` challenges: the system's name.
    pub realm: String,
}

/// Limits on producer requests.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Largest body in bytes: `runtime.body_limit`.
    pub body: usize,
    /// Deepest nesting of arrays and objects: `runtime.json_depth_limit`.
    pub json_depth: usize,
    /// Time to receive the body once the headers arrived:
    /// `runtime.body_timeout`.
    pub body_timeout: Duration,
}

/// Builds the router of the producers. It serves the probes and
/// `/metrics` too, unless `admin_separate` is true because they have a
/// server of their own (see [`admin_router`]).
pub fn router(ingress: Ingress, producers: Vec<Producer>, admin_separate: bool) -> Router {
    let body_limit = ingress.limits.body;
    let state = Arc::new(ingress);
    let mut router = if admin_separate {
        Router::new()
    } else {
        admin_routes()
    };
    for producer in producers {
        let path = producer.path.clone();
        let method = producer.method.clone();
        let producer = Arc::new(producer);
        let route: MethodRouter<Arc<Ingress>> = on(
            axum::routing::MethodFilter::try_from(method)
                .unwrap_or(axum::routing::MethodFilter::POST),
            move |State(state): State<Arc<Ingress>>, request: Request| {
                let producer = producer.clone();
                async move { produce(&state, &producer, request).await }
            },
        );
        router = router.route(&path, route);
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Builds the router of the admin server: `/healthz`, `/readyz` and
/// `/metrics` alone.
pub fn admin_router(ingress: Ingress) -> Router {
    admin_routes()
        .fallback(not_found)
        .with_state(Arc::new(ingress))
}

fn admin_routes() -> Router<Arc<Ingress>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
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

/// Handles one producer request: credentials, checks, envelope, validation,
/// confirmed publish.
async fn produce(state: &Ingress, producer: &Producer, request: Request) -> Response {
    let response = match accept(state, producer, request).await {
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

async fn accept(state: &Ingress, producer: &Producer, request: Request) -> Result<Event, Response> {
    // Credentials first, so that a client without them learns nothing
    // more about the endpoint and the server reads no body for it.
    let headers = request.headers().clone();
    let headers = &headers;
    if let Some(rejection) = authenticate(state, producer, headers) {
        return Err(rejection);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default())
        .filter(|value| !value.is_empty());
    if !content_type.is_some_and(is_json_content_type) {
        let detail = match content_type {
            Some(content_type) => format!(
                "content type `{content_type}` is not JSON; send `Content-Type: application/json`"
            ),
            None => {
                "the request has no content type; send `Content-Type: application/json`".to_owned()
            }
        };
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            &detail,
            None,
        ));
    }
    let body = read_body(state, producer, request).await?;
    let depth_limit = state.limits.json_depth;
    if nesting_exceeds(&body, depth_limit) {
        return Err(too_deep(depth_limit));
    }
    let mut data: Value = serde_json::from_slice(&body).map_err(|err| {
        // serde_json stops at 128 levels, above the largest depth limit,
        // so this only happens when the limits change.
        if err.to_string().contains("recursion limit") {
            too_deep(depth_limit)
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
            PublishError::Partial { .. } if err.is_transient() => unavailable(&format!(
                "{err}, so a retry publishes it there again as a new event with a new id; \
                 retry later"
            )),
            _ if err.is_transient() => {
                unavailable(&format!("{err}; nothing was published, retry later"))
            }
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

/// Checks the request's credentials when the producer requires them, and
/// returns the 401 or 403 response for a request that fails the check.
fn authenticate(state: &Ingress, producer: &Producer, headers: &HeaderMap) -> Option<Response> {
    let accepted = producer.accepted_credentials.as_ref()?;
    let verdict = state.credentials.check(accepted, headers);
    let (status, title, detail) = match &verdict {
        auth::Verdict::Accepted { .. } => return None,
        auth::Verdict::NotAccepted { credential } => {
            tracing::debug!(producer = %producer.name, %credential,
                "request rejected: valid credential that this producer does not accept");
            (
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "the credential is valid, but producer `{}` does not accept it",
                    producer.name
                ),
            )
        }
        auth::Verdict::Invalid { .. } => {
            tracing::debug!(producer = %producer.name, "request rejected: invalid credentials");
            (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the credentials are invalid; send a valid bearer token or API key".to_owned(),
            )
        }
        auth::Verdict::Missing => {
            tracing::debug!(producer = %producer.name, "request rejected: no credentials");
            (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                format!(
                    "producer `{}` requires credentials; the `WWW-Authenticate` header says which",
                    producer.name
                ),
            )
        }
    };
    let mut response = problem(status, title, &detail, None);
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        for challenge in state
            .credentials
            .challenges(accepted, &state.realm, &verdict)
        {
            headers.append(header::WWW_AUTHENTICATE, challenge);
        }
    }
    // The body was not read, so the connection cannot carry another request.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// Reads the body within the body timeout and size limit.
async fn read_body(
    state: &Ingress,
    producer: &Producer,
    request: Request,
) -> Result<Bytes, Response> {
    let timeout = state.limits.body_timeout;
    let body = match tokio::time::timeout(timeout, Bytes::from_request(request, &())).await {
        Ok(body) => body,
        Err(_) => {
            tracing::debug!(producer = %producer.name, ?timeout,
                "request rejected: the body did not arrive within runtime.body_timeout");
            let mut response = problem(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout",
                &format!(
                    "the body did not arrive within {}; send it faster, or raise `runtime.body_timeout`",
                    humantime::format_duration(timeout)
                ),
                None,
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(response);
        }
    };
    body.map_err(|rejection: BytesRejection| {
        let status = rejection.status();
        let mut response = if status == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = state.limits.body;
            let mut body = problem_body(
                status,
                "Content Too Large",
                &format!(
                    "body is larger than the limit of {limit} bytes; raise `runtime.body_limit` to accept larger bodies"
                ),
            );
            body["limit"] = json!(limit);
            body["setting"] = json!("runtime.body_limit");
            problem_response(status, &body)
        } else {
            problem(
                status,
                status.canonical_reason().unwrap_or("Bad Request"),
                &rejection.body_text(),
                None,
            )
        };
        // The unread rest of the body is still on the connection, so the
        // server closes it. The `Connection: close` header makes keep-alive
        // clients open a new connection.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    })
}

/// Returns whether the arrays and objects in a JSON text nest deeper than
/// `limit` levels. Brackets inside strings do not count. The text need not
/// be valid JSON: the parser reports other faults afterwards.
fn nesting_exceeds(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Returns the 422 for a body nested deeper than `limit` levels. Besides the
/// standard members, it names the limit and the setting that raises it.
fn too_deep(limit: usize) -> Response {
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    let mut body = problem_body(
        status,
        "Unprocessable Content",
        &format!(
            "JSON nesting is deeper than the limit of {limit} levels; raise `runtime.json_depth_limit` (at most {}) to accept deeper bodies",
            crate::manifest::MAX_JSON_DEPTH_LIMIT
        ),
    );
    body["limit"] = json!(limit);
    body["setting"] = json!("runtime.json_depth_limit");
    problem_response(status, &body)
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
        detail,
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// Builds an RFC 9457 problem response, with `errors` when given.
fn problem(status: StatusCode, title: &str, detail: &str, errors: Option<Value>) -> Response {
    let mut body = problem_body(status, title, detail);
    if let Some(errors) = errors {
        body["errors"] = errors;
    }
    problem_response(status, &body)
}

/// Returns the standard members of an RFC 9457 problem document.
fn problem_body(status: StatusCode, title: &str, detail: &str) -> Value {
    json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    })
}

fn problem_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::nesting_exceeds;

    #[test]
    fn nesting_counted_outside_strings() {
        let cases: [(&str, usize, bool); 8] = [
            ("{}", 1, false),
            ("{\"a\": [1]}", 1, true),
            ("{\"a\": [1]}", 2, false),
            ("[[[]]]", 2, true),
            ("[[], [], []]", 2, false),
            ("{\"a\": \"[[[[\"}", 1, false),
            ("{\"a\": \"\\\"[[\"}", 1, false),
            ("\"text\"", 1, false),
        ];
        for (text, limit, expected) in cases {
            assert_eq!(
                nesting_exceeds(text.as_bytes(), limit),
                expected,
                "{text} with limit {limit}"
            );
        }
    }

    #[test]
    fn serde_json_reads_deepest_allowed_body() {
        let limit = crate::manifest::MAX_JSON_DEPTH_LIMIT as usize;
        let body = format!("{}{}", "[".repeat(limit), "]".repeat(limit));
        assert!(!nesting_exceeds(body.as_bytes(), limit));
        let parsed = serde_json::from_str::<serde_json::Value>(&body);
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
