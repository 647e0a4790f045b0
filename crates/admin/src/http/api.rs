//! The JSON API under `/api/v1/`: the gRPC control API's calls over HTTP.
//! Each handler calls the same [`ControlService`] method the gRPC client
//! reaches, so both answer alike (same messages, same token rule, same
//! errors); the answers are the protobuf messages as JSON with the fields'
//! snake_case names (docs/admin-api.md, `openapi.json`).
//!
//! Reads are GETs; changes are POSTs that need the token exactly like the
//! gRPC mutations, and are refused when another site's page sends them.
//! Errors are `{"error": {"code", "message"}}` with the matching status.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;
use tonic::metadata::MetadataValue;

use super::{AppState, security};
use crate::auth::{self, AuthError};
use crate::grpc::ControlService;
use crate::pb::v1 as pb;
use crate::pb::v1::admin_server::Admin as _;

/// The OpenAPI 3.1 document of this API, served at `/api/v1/openapi.json`.
pub(super) const OPENAPI: &str = include_str!("../../assets/openapi.json");

/// Bodies of changes are a few fields; anything bigger is refused.
const BODY_LIMIT: usize = 16 * 1024;

pub(super) fn routes() -> Router<Arc<AppState>> {
    const BACKEND: &str = "/pools/{pool}/backends/{backend}";
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/status", get(status))
        .route("/listeners", get(listeners))
        .route("/routes", get(routes_list))
        .route("/pools", get(pools))
        .route("/backends", get(all_backends))
        .route(
            "/pools/{pool}/backends",
            get(pool_backends).post(add_backend),
        )
        .route("/pools/{pool}/history", get(pool_history))
        .route(BACKEND, get(backend))
        .route(&format!("{BACKEND}/history"), get(backend_history))
        .route(&format!("{BACKEND}/{{action}}"), post(backend_change))
        .route("/reload", post(reload))
        .route("/firewall/rules", get(firewall_rules).post(firewall_add))
        .route("/firewall/rules/remove", post(firewall_remove))
        .route(
            "/listeners/{listener}/max_connections",
            post(max_connections),
        )
        .route("/events", get(super::events::stream))
        .route("/explain", get(explain))
        .route("/connections", get(connections))
        .route("/connections/close", post(close_connections))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "not_found", "no such API path") })
        .method_not_allowed_fallback(|| async {
            failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "reads are GET, changes are POST",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// A JSON answer.
pub(super) fn json<T: Serialize>(code: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot write the answer: {e}"),
        ),
    }
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
pub(super) fn failure(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut r = json(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Why a call was not done, answered as [`failure`] does.
#[derive(Debug)]
pub(super) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        failure(self.status, self.code, &self.message)
    }
}

type Answer = Result<Response, Refusal>;

/// A control API error as HTTP: the status and code its gRPC code stands for.
fn status_failure(s: &tonic::Status) -> Refusal {
    use tonic::Code;
    let (status, code) = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::FailedPrecondition | Code::Aborted => (StatusCode::CONFLICT, "failed_precondition"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    Refusal::new(status, code, s.message())
}

fn reply<T: Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Answer {
    match r {
        Ok(r) => Ok(json(StatusCode::OK, r.get_ref())),
        Err(s) => Err(status_failure(&s)),
    }
}

/// The control API, or a 503 while weir is starting.
fn control(state: &AppState) -> Result<ControlService, Refusal> {
    state.control().cloned().ok_or_else(|| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "starting: the first probe round is running",
        )
    })
}

/// A call as the gRPC client would make it, carrying the request's
/// `Authorization` header as metadata.
fn call<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok())
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// What every change goes through first: refused from another site's page,
/// then without the token (before its body is even looked at).
fn change(state: &AppState, headers: &HeaderMap) -> Result<ControlService, Refusal> {
    if security::cross_site(headers) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "changes from another site's page are refused",
        ));
    }
    let c = control(state)?;
    let server = state
        .server()
        .ok_or_else(|| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "starting"))?;
    if let Some(why) = server.changes_refused() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            why,
        ));
    }
    let snapshot = server.snapshot();
    let expected = snapshot.config.admin.token.as_ref().map(|t| t.secret());
    auth::check(call(headers, ()).metadata(), expected).map_err(|e| {
        state.stats.grpc.auth_failed(e);
        tracing::warn!(reason = e.as_str(), "admin API change refused");
        let message = match e {
            AuthError::Missing => {
                "this weir needs a token for changes: send `Authorization: Bearer <token>`"
            }
            AuthError::Wrong => "the token is wrong",
        };
        Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    })?;
    Ok(c)
}

/// A change's body, not yet read: it is read only once the change passed
/// [`change`], so a caller without the token is answered at once, before it
/// is invited to send it.
type Sent = axum::body::Body;

/// The fields of a change's JSON body: an object, or nothing at all. A body
/// larger than [`BODY_LIMIT`], or not all there `within` (a client trickling
/// it would hold a connection and a change's turn), is refused, answered as
/// JSON like every other error.
async fn body(
    sent: Sent,
    within: std::time::Duration,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    let read = tokio::time::timeout(within, axum::body::to_bytes(sent, BODY_LIMIT));
    let Ok(read) = read.await else {
        return Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_argument",
            format!("the body did not arrive within {within:?}"),
        ));
    };
    let bytes = read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        let status = if too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Refusal::new(
            status,
            "invalid_argument",
            format!("the body cannot be read: {e} (at most {BODY_LIMIT} bytes)"),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(bytes.as_ref()) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the body must be a JSON object")),
        Err(e) => Err(bad(&format!("the body is not JSON: {e}"))),
    }
}

/// A path's segments, decoded; one that is not UTF-8 once decoded is a
/// `400` answered as JSON like every other error (axum's own is plain text).
struct Segments<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Refusal> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Segments(t)),
            Err(e) => Err(bad(&e.body_text())),
        }
    }
}

fn bad(message: &str) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
}

/// `field`: a whole number that fits in `u32`, or null (absent is an error:
/// leaving a field out must not clear anything by accident).
fn optional_u32(
    fields: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<u32>, Refusal> {
    if !fields.contains_key(field) {
        return Err(bad(&format!(
            "{field:?} is missing (a number, or null to clear)"
        )));
    }
    number(fields, field)
}

/// `field`: a whole number that fits in `u32`; absent or null is `None`.
fn number(fields: &serde_json::Map<String, Value>, field: &str) -> Result<Option<u32>, Refusal> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(&format!("{field:?} must be a whole number or null"))),
    }
}

fn string<'a>(fields: &'a serde_json::Map<String, Value>, field: &str) -> Result<&'a str, Refusal> {
    match fields.get(field) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(&format!("{field:?} must be a string"))),
    }
}

/// Checks the body has only `known` fields: a misspelt one is an error,
/// not silently ignored.
fn only(fields: &serde_json::Map<String, Value>, known: &[&str]) -> Result<(), Refusal> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(bad(&format!(
            "unknown field {k:?} (expected {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

async fn openapi() -> Answer {
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}

async fn status(State(state): State<Arc<AppState>>) -> Answer {
    let c = control(&state)?;
    reply(c.status(tonic::Request::new(pb::StatusRequest {})).await)
}

async fn listeners(State(state): State<Arc<AppState>>) -> Answer {
    let c = control(&state)?;
    reply(
        c.list_listeners(tonic::Request::new(pb::ListListenersRequest {}))
            .await,
    )
}

async fn routes_list(State(state): State<Arc<AppState>>) -> Answer {
    let c = control(&state)?;
    reply(
        c.list_routes(tonic::Request::new(pb::ListRoutesRequest {}))
            .await,
    )
}

async fn pools(State(state): State<Arc<AppState>>) -> Answer {
    let c = control(&state)?;
    reply(
        c.list_pools(tonic::Request::new(pb::ListPoolsRequest {}))
            .await,
    )
}

async fn list_backends(state: &AppState, pool: String) -> Answer {
    let c = control(state)?;
    reply(
        c.list_backends(tonic::Request::new(pb::ListBackendsRequest { pool }))
            .await,
    )
}

async fn all_backends(State(state): State<Arc<AppState>>) -> Answer {
    list_backends(&state, String::new()).await
}

async fn pool_backends(
    State(state): State<Arc<AppState>>,
    Segments(pool): Segments<String>,
) -> Answer {
    if pool.is_empty() {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no pool \"\"",
        ));
    }
    list_backends(&state, pool).await
}

async fn backend(
    State(state): State<Arc<AppState>>,
    Segments((pool, backend)): Segments<(String, String)>,
) -> Answer {
    let c = control(&state)?;
    let listed = c
        .list_backends(tonic::Request::new(pb::ListBackendsRequest {
            pool: pool.clone(),
        }))
        .await;
    match listed {
        Ok(r) => match r
            .into_inner()
            .backends
            .into_iter()
            .find(|b| b.name == backend)
        {
            Some(b) => Ok(json(StatusCode::OK, &b)),
            None => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("pool {pool:?} has no backend {backend:?}"),
            )),
        },
        Err(s) => Err(status_failure(&s)),
    }
}

async fn backend_history(
    State(state): State<Arc<AppState>>,
    Segments((pool, backend)): Segments<(String, String)>,
) -> Answer {
    let c = control(&state)?;
    reply(
        c.backend_history(tonic::Request::new(pb::BackendHistoryRequest {
            pool,
            backend,
        }))
        .await,
    )
}

async fn pool_history(
    State(state): State<Arc<AppState>>,
    Segments(pool): Segments<String>,
) -> Answer {
    let c = control(&state)?;
    reply(
        c.pool_history(tonic::Request::new(pb::PoolHistoryRequest { pool }))
            .await,
    )
}

async fn firewall_rules(State(state): State<Arc<AppState>>) -> Answer {
    let c = control(&state)?;
    held_reply(
        c.list_firewall_rules(tonic::Request::new(pb::ListFirewallRulesRequest {}))
            .await,
    )
}

/// `POST /pools/{pool}/backends/{backend}/{action}`: drain, enable,
/// disable, or weight (with a body).
async fn backend_change(
    State(state): State<Arc<AppState>>,
    Segments((pool, backend, action)): Segments<(String, String, String)>,
    headers: HeaderMap,
    bytes: Sent,
) -> Answer {
    let admin = match action.as_str() {
        "drain" => Some(pb::AdminState::Drain),
        "enable" => Some(pb::AdminState::Enabled),
        "disable" => Some(pb::AdminState::Disabled),
        "weight" | "remove" => None,
        _ => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API path: a backend's changes are drain, enable, disable, weight \
                 and remove",
            ));
        }
    };
    let c = change(&state, &headers)?;
    if action == "remove" {
        let request = pb::RemoveBackendRequest { pool, backend };
        return reply(c.remove_backend(call(&headers, request)).await);
    }
    if let Some(admin) = admin {
        let request = pb::SetBackendAdminRequest {
            pool,
            backend,
            state: admin.into(),
        };
        return reply(c.set_backend_admin(call(&headers, request)).await);
    }
    let fields = body(bytes, state.body_timeout).await?;
    only(&fields, &["weight"])?;
    let request = pb::SetBackendWeightRequest {
        pool,
        backend,
        weight: optional_u32(&fields, "weight")?,
    };
    reply(c.set_backend_weight(call(&headers, request)).await)
}

/// `POST /pools/{pool}/backends`: a backend added at runtime.
async fn add_backend(
    State(state): State<Arc<AppState>>,
    Segments(pool): Segments<String>,
    headers: HeaderMap,
    bytes: Sent,
) -> Answer {
    let c = change(&state, &headers)?;
    let fields = body(bytes, state.body_timeout).await?;
    only(&fields, &["address", "name", "weight", "tier"])?;
    let address = string(&fields, "address")?;
    if address.is_empty() {
        return Err(bad("\"address\" is missing (IP:port)"));
    }
    let request = pb::AddBackendRequest {
        pool,
        address: address.to_owned(),
        name: string(&fields, "name")?.to_owned(),
        weight: number(&fields, "weight")?,
        tier: number(&fields, "tier")?.unwrap_or(0),
    };
    reply(c.add_backend(call(&headers, request)).await)
}

/// `GET /explain?listener=L&client=ADDR[&sni=NAME][&alpn=P][&path=/x]
/// [&method=M][&host=H][&header=Name:+value]...` (`header` as often as
/// needed).
async fn explain(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Answer {
    let c = control(&state)?;
    let query = Query::of(
        &uri,
        &[
            "listener", "client", "sni", "alpn", "path", "method", "host", "header",
        ],
    )?;
    let field = |name: &str| query.get(name);
    for required in ["listener", "client"] {
        if field(required).is_empty() {
            return Err(bad(&format!("{required:?} is missing")));
        }
    }
    let request = pb::ExplainRequest {
        listener: field("listener"),
        client: field("client"),
        sni: field("sni"),
        alpn: field("alpn"),
        path: field("path"),
        method: field("method"),
        host: field("host"),
        headers: query.all("header"),
    };
    reply(c.explain(tonic::Request::new(request)).await)
}

/// `GET /connections?[listener=L][&pool=P][&backend=B][&client=CIDR][&id=N][&limit=N]`.
async fn connections(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Answer {
    let c = control(&state)?;
    let query = Query::of(
        &uri,
        &["listener", "pool", "backend", "client", "id", "limit"],
    )?;
    let field = |name: &str| query.get(name);
    let whole = |name: &str| -> Result<Option<u64>, Refusal> {
        let v = field(name);
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<u64>()
            .map(Some)
            .map_err(|_| bad(&format!("{name:?} must be a whole number")))
    };
    let limit = whole("limit")?.unwrap_or(0);
    let request = pb::ConnectionFilter {
        listener: field("listener"),
        pool: field("pool"),
        backend: field("backend"),
        client: field("client"),
        id: whole("id")?,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
    };
    held_reply(c.list_connections(tonic::Request::new(request)).await)
}

/// The JSON of a listing whose answer holds places in the listings' budget
/// (see `listing`): they go back once the body is sent or given up.
fn held_reply<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Answer {
    let held = r
        .as_ref()
        .ok()
        .and_then(|r| r.extensions().get::<crate::listing::Held>().cloned());
    Ok(reply(r)?.map(|body| axum::body::Body::new(crate::listing::Holding::new(body, held))))
}

/// `POST /connections/close` with `{"listener", "pool", "backend",
/// "client", "id"}` (at least one).
async fn close_connections(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Sent,
) -> Answer {
    let c = change(&state, &headers)?;
    let fields = body(bytes, state.body_timeout).await?;
    only(&fields, &["listener", "pool", "backend", "client", "id"])?;
    let id = match fields.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad("\"id\" must be a whole number or null"))?,
        ),
    };
    let request = pb::ConnectionFilter {
        listener: string(&fields, "listener")?.to_owned(),
        pool: string(&fields, "pool")?.to_owned(),
        backend: string(&fields, "backend")?.to_owned(),
        client: string(&fields, "client")?.to_owned(),
        id,
        limit: 0,
    };
    reply(c.close_connections(call(&headers, request)).await)
}

/// A query string's parameters, every one of them known.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(uri: &axum::http::Uri, known: &[&str]) -> Result<Query, Refusal> {
        let pairs = query_pairs(uri.query().unwrap_or_default())
            .ok_or_else(|| bad("the query string is not valid percent-encoding"))?;
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(bad(&format!(
                "unknown parameter {k:?} (expected {})",
                known.join(", ")
            )));
        }
        Ok(Query(pairs))
    }

    /// Every value of `name`, in order.
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of `name`; empty when absent.
    fn get(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// `a=b&c=d` with `%XX` and `+` decoded; `None` for a bad escape or bytes
/// that are not UTF-8.
fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    fn decode(s: &str) -> Option<String> {
        let mut out = Vec::with_capacity(s.len());
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let hi = char::from(bytes.next()?).to_digit(16)?;
                    let lo = char::from(bytes.next()?).to_digit(16)?;
                    out.push(u8::try_from(hi * 16 + lo).ok()?);
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out).ok()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Answer {
    let c = change(&state, &headers)?;
    reply(c.reload(call(&headers, pb::ReloadRequest {})).await)
}

async fn firewall_add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Sent,
) -> Answer {
    let c = change(&state, &headers)?;
    let fields = body(bytes, state.body_timeout).await?;
    only(&fields, &["network", "action", "duration_ms", "reason"])?;
    let action = match string(&fields, "action")? {
        "deny" => pb::FirewallAction::Deny,
        "allow" => pb::FirewallAction::Allow,
        _ => return Err(bad("\"action\" must be \"deny\" or \"allow\"")),
    };
    let duration_ms = match fields.get("duration_ms") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("\"duration_ms\" must be a positive whole number or null"))?,
    };
    let request = pb::AddFirewallRuleRequest {
        network: string(&fields, "network")?.to_owned(),
        action: action.into(),
        duration_ms,
        reason: string(&fields, "reason")?.to_owned(),
    };
    reply(c.add_firewall_rule(call(&headers, request)).await)
}

async fn firewall_remove(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Sent,
) -> Answer {
    let c = change(&state, &headers)?;
    let fields = body(bytes, state.body_timeout).await?;
    only(&fields, &["network"])?;
    let request = pb::RemoveFirewallRuleRequest {
        network: string(&fields, "network")?.to_owned(),
    };
    reply(c.remove_firewall_rule(call(&headers, request)).await)
}

async fn max_connections(
    State(state): State<Arc<AppState>>,
    Segments(listener): Segments<String>,
    headers: HeaderMap,
    bytes: Sent,
) -> Answer {
    let c = change(&state, &headers)?;
    let fields = body(bytes, state.body_timeout).await?;
    only(&fields, &["max_connections"])?;
    let request = pb::SetListenerMaxConnectionsRequest {
        listener,
        max_connections: optional_u32(&fields, "max_connections")?,
    };
    reply(
        c.set_listener_max_connections(call(&headers, request))
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::query_pairs;

    #[test]
    fn query_strings_are_decoded_and_bad_ones_refused() {
        let pairs = |q| query_pairs(q).expect("valid");
        assert_eq!(
            pairs("listener=front&client=%5B%3A%3A1%5D%3A5&sni=a+b"),
            [
                ("listener".to_owned(), "front".to_owned()),
                ("client".to_owned(), "[::1]:5".to_owned()),
                ("sni".to_owned(), "a b".to_owned()),
            ]
        );
        assert_eq!(pairs(""), []);
        assert_eq!(
            pairs("flag&&x="),
            [
                ("flag".to_owned(), String::new()),
                ("x".to_owned(), String::new())
            ]
        );
        for bad in ["a=%", "a=%4", "a=%zz", "a=%ff"] {
            assert_eq!(query_pairs(bad), None, "{bad}");
        }
    }
}
