//! The board's HTTP API (axum): submissions from bearer-token holders, the job protocol for
//! workers (lease, renew, result), the leaderboard as JSON, and the server-rendered pages.
//!
//! Every refusal is a typed JSON error `{"error": {"code", "message"}}` with its HTTP status
//! (429s carry `Retry-After`), recorded in the audit log with the record unchanged.

use super::store::{
    clean, Caller, JobOutcome, NewSubmission, PluginKind, Refusal, Store, StoreError,
};
use super::{Limits, Role, Setting};
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    store: Arc<Mutex<Store>>,
    limits: Arc<Limits>,
    /// The board's settings (fixed, so read without the store's lock).
    settings: Arc<Vec<Setting>>,
    /// Anonymous refusals audited in the current minute: (minute, count).
    anonymous: Arc<Mutex<(u64, u32)>>,
}

/// Anonymous refusals (no or unknown token) written to the audit log per minute; the rest are
/// only counted, so a flood cannot grow the log without bound.
const ANONYMOUS_AUDITS_PER_MINUTE: u32 = 60;

/// The largest JSON body a worker's call reads (a search task's outcome included).
const WORKER_BODY_BYTES: usize = 2 << 20;

/// The largest search task (its run configuration, Wanda's reference losses, the node).
const TASK_BODY_BYTES: usize = 4 << 20;

impl AppState {
    /// The state for a store and its limits.
    pub fn new(store: Store, limits: Limits) -> Self {
        let settings = Arc::new(store.config().settings.clone());
        AppState {
            store: Arc::new(Mutex::new(store)),
            limits: Arc::new(limits),
            settings,
            anonymous: Arc::new(Mutex::new((0, 0))),
        }
    }
}

/// An API error: a refusal of the request, or the server's own failure (500, logged).
#[derive(Debug)]
pub struct ApiError(Refusal);

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError(r)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(r) => ApiError(r),
            e => {
                eprintln!("serve: {}", crate::term::line(&e.to_string()));
                ApiError(Refusal::new(
                    500,
                    "internal",
                    "the server failed; see its log",
                ))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let r = self.0;
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "error": { "code": r.code, "message": r.message } });
        let mut resp = (status, Json(body)).into_response();
        if let Some(s) = r.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if r.status == 401 {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"autoprune\""),
            );
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Run `f` on the store off the async threads.
async fn db<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&mut Store, &Limits) -> super::store::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let (store, limits) = (st.store.clone(), st.limits.clone());
    tokio::task::spawn_blocking(move || {
        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s, &limits)
    })
    .await
    .map_err(|e| {
        ApiError::from(StoreError::Db {
            path: Default::default(),
            message: format!("a store task failed: {e}"),
        })
    })?
    .map_err(ApiError::from)
}

/// Record a refusal in the audit log and return it.
async fn refuse(st: &AppState, actor: &str, what: &str, r: Refusal) -> ApiError {
    if actor == "anonymous" {
        let minute = (super::now() / 60.0) as u64;
        let mut g = st.anonymous.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != minute {
            *g = (minute, 0);
        }
        g.1 += 1;
        if g.1 > ANONYMOUS_AUDITS_PER_MINUTE {
            return ApiError(r);
        }
    }
    let (a, w, rr) = (actor.to_string(), what.to_string(), r.clone());
    let _ = db(st, move |s, _| s.audit_refusal(&a, &w, &rr)).await;
    ApiError(r)
}

/// The caller of a request, who must hold a token of `role`.
async fn auth(st: &AppState, headers: &HeaderMap, role: Role, what: &str) -> ApiResult<Caller> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 200)
        .map(str::to_string);
    let Some(token) = token else {
        let r = Refusal::new(
            401,
            "unauthorized",
            "missing bearer token (Authorization: Bearer …)",
        );
        return Err(refuse(st, "anonymous", what, r).await);
    };
    let Some(caller) = db(st, move |s, _| s.caller(&token)).await? else {
        let r = Refusal::new(401, "unauthorized", "unknown or revoked token");
        return Err(refuse(st, "anonymous", what, r).await);
    };
    if caller.role != role {
        let r = Refusal::new(
            403,
            "forbidden",
            format!("this needs a {} token", role.as_str()),
        );
        return Err(refuse(st, &caller.name, what, r).await);
    }
    Ok(caller)
}

/// The router with every route, its limits and headers.
pub fn router(state: AppState) -> Router {
    let body_limit = state
        .limits
        .max_component_bytes
        .max(state.limits.max_source_bytes)
        + (64 << 10);
    Router::new()
        .route("/", get(board_page))
        .route("/submissions/{id}", get(detail_page))
        .route("/v1/health", get(health))
        .route("/v1/leaderboard", get(leaderboard))
        .route("/v1/submissions", post(submit))
        .route("/v1/submissions/{id}", get(submission))
        .route(
            "/v1/tasks",
            post(submit_task).layer(DefaultBodyLimit::max(TASK_BODY_BYTES)),
        )
        .route("/v1/tasks/{id}", get(task))
        .route(
            "/v1/jobs/lease",
            post(lease).layer(DefaultBodyLimit::max(WORKER_BODY_BYTES)),
        )
        .route(
            "/v1/jobs/{id}/renew",
            post(renew).layer(DefaultBodyLimit::max(WORKER_BODY_BYTES)),
        )
        .route(
            "/v1/jobs/{id}/masks",
            post(masks).layer(DefaultBodyLimit::max(WORKER_BODY_BYTES)),
        )
        .route(
            "/v1/jobs/{id}/result",
            post(result).layer(DefaultBodyLimit::max(WORKER_BODY_BYTES)),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(middleware::from_fn(headers))
        .with_state(state)
}

/// Open connections at most; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 512;

/// Serve `router(state)` on `listener` until `shutdown` resolves: HTTP/1, at most
/// [`MAX_CONNECTIONS`] open, each request's headers within the limits' `header_secs` (the
/// wait for the next request on a kept-alive connection included, so a slow client cannot hold
/// a connection) and its handling, body included, within their `request_secs`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let header = Duration::from_secs_f64(state.limits.header_secs);
    let app = router(state);
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    eprintln!("serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let svc = app
            .clone()
            .map_request(|r: hyper::Request<hyper::body::Incoming>| r.map(axum::body::Body::new));
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn time_limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let limit = Duration::from_secs_f64(st.limits.request_secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(Refusal::new(
            408,
            "timeout",
            format!("the request took longer than {} s", st.limits.request_secs),
        ))
        .into_response(),
    }
}

/// Headers on every response: nothing on a page may run or load (no scripts at all), and
/// nothing is sniffed.
async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn not_found() -> ApiError {
    ApiError(Refusal::new(404, "not_found", "no such route"))
}

async fn health(State(st): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let counts = db(&st, |s, _| s.job_counts()).await?;
    let jobs: serde_json::Map<String, serde_json::Value> =
        counts.into_iter().map(|(k, v)| (k, json!(v))).collect();
    Ok(Json(json!({ "ok": true, "jobs": jobs })))
}

async fn leaderboard(State(st): State<AppState>) -> ApiResult<Json<super::store::Leaderboard>> {
    Ok(Json(db(&st, |s, _| s.leaderboard()).await?))
}

async fn board_page(State(st): State<AppState>) -> ApiResult<Html<String>> {
    let (board, recent, config) = db(&st, |s, _| {
        Ok((s.leaderboard()?, s.recent(50)?, s.config().clone()))
    })
    .await?;
    Ok(Html(super::page::board(&board, &recent, &config)))
}

fn parse_id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| ApiError(Refusal::new(404, "not_found", "no such id")))
}

async fn detail_page(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Html<String>> {
    let id = parse_id(&id)?;
    match db(&st, move |s, _| s.public_submission(id)).await? {
        Some(v) => Ok(Html(super::page::detail(&v))),
        None => Err(ApiError(Refusal::new(
            404,
            "not_found",
            format!("no submission {id}"),
        ))),
    }
}

/// A multipart field's bytes, at most `max` (413 beyond).
async fn field_bytes(
    field: &mut axum::extract::multipart::Field<'_>,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > max {
                    return Err(Refusal::new(
                        413,
                        "too_large",
                        format!("{what} is larger than {max} bytes"),
                    ));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(multipart_refusal(&e.body_text(), e.status())),
        }
    }
}

fn multipart_refusal(text: &str, status: StatusCode) -> Refusal {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Refusal::new(413, "too_large", "the request body is over the size limit")
    } else {
        Refusal::new(400, "bad_multipart", clean(text, 200))
    }
}

/// The parts of a submission form.
struct Form {
    file: Option<(Option<String>, Vec<u8>)>,
    name: Option<String>,
    settings: Option<String>,
    publish: bool,
}

async fn read_form(mut mp: Multipart, limits: &Limits) -> Result<Form, Refusal> {
    let mut form = Form {
        file: None,
        name: None,
        settings: None,
        publish: false,
    };
    let small = |b: Vec<u8>, what: &str| {
        String::from_utf8(b)
            .map_err(|_| Refusal::new(400, "not_utf8", format!("{what} is not UTF-8")))
    };
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_refusal(&e.body_text(), e.status())),
        };
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "metric" if form.file.is_none() => {
                let file_name = field.file_name().map(|f| clean(f, 200));
                let max = limits.max_component_bytes.max(limits.max_source_bytes);
                let bytes = field_bytes(&mut field, max, "the metric file").await?;
                form.file = Some((file_name, bytes));
            }
            "name" if form.name.is_none() => {
                form.name = Some(small(field_bytes(&mut field, 400, "name").await?, "name")?)
            }
            "settings" if form.settings.is_none() => {
                form.settings = Some(small(
                    field_bytes(&mut field, 400, "settings").await?,
                    "settings",
                )?)
            }
            "publish" => {
                let v = small(field_bytes(&mut field, 16, "publish").await?, "publish")?;
                form.publish = matches!(v.trim(), "1" | "true" | "yes" | "on");
            }
            other => {
                return Err(Refusal::new(
                    400,
                    "bad_field",
                    format!(
                        "unexpected or repeated form field `{}` (metric, name, settings, publish)",
                        clean(other, 40)
                    ),
                ))
            }
        }
    }
    Ok(form)
}

/// Check a submission's file and settings; returns what the store takes.
fn validate(form: Form, limits: &Limits, board: &[Setting]) -> Result<NewSubmission, Refusal> {
    let Some((file_name, body)) = form.file else {
        return Err(Refusal::new(
            400,
            "no_metric",
            "the form has no `metric` file",
        ));
    };
    if body.is_empty() {
        return Err(Refusal::new(400, "empty", "the metric file is empty"));
    }
    let fname = file_name.clone().unwrap_or_default();
    let kind = if fname.ends_with(".rs") {
        PluginKind::Rs
    } else if fname.ends_with(".wasm") || body.starts_with(b"\0asm") {
        PluginKind::Wasm
    } else {
        return Err(Refusal::new(
            400,
            "unknown_kind",
            "name the file `.rs` (source) or `.wasm` (component)",
        ));
    };
    match kind {
        PluginKind::Rs => {
            if body.len() > limits.max_source_bytes {
                return Err(Refusal::new(
                    413,
                    "too_large",
                    format!("a source is at most {} bytes", limits.max_source_bytes),
                ));
            }
            if std::str::from_utf8(&body).is_err() {
                return Err(Refusal::new(
                    400,
                    "not_utf8",
                    "the source is not UTF-8 text",
                ));
            }
        }
        _ => {
            if body.len() > limits.max_component_bytes {
                return Err(Refusal::new(
                    413,
                    "too_large",
                    format!(
                        "a component is at most {} bytes",
                        limits.max_component_bytes
                    ),
                ));
            }
            match crate::build::component_world(&body) {
                Ok(crate::sandbox::World::Metric) => {}
                Ok(crate::sandbox::World::Allocator) => {
                    return Err(Refusal::new(
                        422,
                        "not_a_metric",
                        "this component is an allocator; the board ranks metrics",
                    ))
                }
                Err(f) => {
                    return Err(Refusal::new(
                        422,
                        "not_a_component",
                        clean(&f.to_string(), 400),
                    ))
                }
            }
        }
    }
    let settings = match form.settings.as_deref().map(str::trim) {
        None | Some("") => board.to_vec(),
        Some(list) => {
            let mut out: Vec<Setting> = Vec::new();
            for s in list.split(',') {
                let s: Setting = s.parse().map_err(|e: super::ParseSettingError| {
                    Refusal::new(400, "unknown_setting", e.to_string())
                })?;
                if !board.contains(&s) {
                    return Err(Refusal::new(
                        400,
                        "unknown_setting",
                        format!(
                            "this board ranks {}, not {s}",
                            board
                                .iter()
                                .map(|b| b.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            out
        }
    };
    let stem = fname
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".rs")
        .trim_end_matches(".wasm")
        .to_string();
    let name = form
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(if stem.is_empty() {
            "unnamed".into()
        } else {
            stem
        });
    Ok(NewSubmission {
        name: clean(name.trim(), 80),
        kind,
        body,
        settings,
        publish: form.publish,
    })
}

async fn submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let caller = auth(&st, &headers, Role::Submitter, "submit").await?;
    // Over a quota: refused before the body is read or a component decoded.
    let who = caller.clone();
    match db(&st, move |s, l| s.precheck(&who, l)).await {
        Ok(()) => {}
        Err(ApiError(r)) if r.status != 500 => {
            return Err(refuse(&st, &caller.name, "submit", r).await)
        }
        Err(e) => return Err(e),
    }
    let mp = match mp {
        Ok(m) => m,
        Err(e) => {
            let r = Refusal::new(400, "bad_multipart", clean(&e.body_text(), 200));
            return Err(refuse(&st, &caller.name, "submit", r).await);
        }
    };
    let form = match read_form(mp, &st.limits).await {
        Ok(f) => f,
        Err(r) => return Err(refuse(&st, &caller.name, "submit", r).await),
    };
    let (limits, board) = (st.limits.clone(), st.settings.clone());
    // Decoding a component's type is work: off the async threads.
    let checked = tokio::task::spawn_blocking(move || validate(form, &limits, &board))
        .await
        .map_err(|e| ApiError(Refusal::new(500, "internal", e.to_string())))?;
    let sub = match checked {
        Ok(s) => s,
        Err(r) => return Err(refuse(&st, &caller.name, "submit", r).await),
    };
    let who = caller.clone();
    match db(&st, move |s, l| s.submit(&who, &sub, l)).await {
        Ok(id) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "id": id,
                "status": format!("/v1/submissions/{id}"),
                "page": format!("/submissions/{id}"),
            })),
        )),
        Err(ApiError(r)) if r.status != 500 => Err(refuse(&st, &caller.name, "submit", r).await),
        Err(e) => Err(e),
    }
}

async fn submission(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<super::store::SubmissionView>> {
    let caller = auth(&st, &headers, Role::Submitter, "status").await?;
    let id = parse_id(&id)?;
    let view = db(&st, move |s, _| {
        let owner = s.submitted_by(id)?;
        let v = s.submission(id, false)?;
        Ok(v.filter(|v| v.baseline || owner.as_deref() == Some(caller.name.as_str())))
    })
    .await?;
    view.map(Json).ok_or_else(|| {
        ApiError(Refusal::new(
            404,
            "not_found",
            format!("no submission {id} of yours"),
        ))
    })
}

/// A JSON body into `T`, or a typed refusal (413 over the worker routes' limit, 400 when it
/// does not parse).
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<T, Refusal> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::new(
                413,
                "too_large",
                format!("a worker's request is at most {WORKER_BODY_BYTES} bytes"),
            )
        } else {
            Refusal::new(400, "bad_body", clean(&e.body_text(), 200))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| Refusal::new(400, "bad_json", clean(&e.to_string(), 300)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRequest {
    /// Which process of the worker token's holder (host and pid, say).
    instance: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    instance: String,
    lease: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultRequest {
    instance: String,
    lease: String,
    outcome: JobOutcome,
}

fn worker_id(caller: &Caller, instance: &str) -> String {
    format!("{}/{}", caller.name, clean(instance, 80))
}

async fn lease(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = auth(&st, &headers, Role::Worker, "lease").await?;
    let req: LeaseRequest = match json_body(body) {
        Ok(r) => r,
        Err(r) => return Err(refuse(&st, &caller.name, "lease", r).await),
    };
    let worker = worker_id(&caller, &req.instance);
    match db(&st, move |s, l| s.lease(&worker, l)).await? {
        Some(l) => Ok(Json(l).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn renew(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = auth(&st, &headers, Role::Worker, "renew").await?;
    let id = parse_id(&id)?;
    let what = format!("renew of job {id}");
    let req: RenewRequest = match json_body(body) {
        Ok(r) => r,
        Err(r) => return Err(refuse(&st, &caller.name, &what, r).await),
    };
    let worker = worker_id(&caller, &req.instance);
    match db(&st, move |s, l| s.renew(id, &worker, &req.lease, l)).await {
        Ok(until) => Ok(Json(json!({ "lease_until": until }))),
        Err(ApiError(r)) if r.status != 500 => Err(refuse(&st, &caller.name, &what, r).await),
        Err(e) => Err(e),
    }
}

async fn result(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = auth(&st, &headers, Role::Worker, "result").await?;
    let id = parse_id(&id)?;
    let req: ResultRequest = match json_body(body) {
        Ok(r) => r,
        Err(r) => return Err(refuse(&st, &caller.name, &format!("result of job {id}"), r).await),
    };
    let worker = worker_id(&caller, &req.instance);
    match db(&st, move |s, _| {
        s.finish(id, &worker, &req.lease, &req.outcome)
    })
    .await
    {
        Ok(()) => Ok(Json(json!({ "ok": true }))),
        Err(ApiError(r)) if r.status != 500 => {
            Err(refuse(&st, &caller.name, &format!("result of job {id}"), r).await)
        }
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest {
    task: serde_json::Value,
}

async fn submit_task(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let caller = auth(&st, &headers, Role::Search, "task").await?;
    let req: TaskRequest = match json_body(body) {
        Ok(r) => r,
        Err(r) => return Err(refuse(&st, &caller.name, "task", r).await),
    };
    let id = db(&st, move |s, _| s.submit_task(&caller, &req.task)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

async fn task(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = auth(&st, &headers, Role::Search, "task status").await?;
    let id = parse_id(&id)?;
    match db(&st, move |s, _| s.task(id, &caller.name)).await? {
        Some((state, outcome, verdict)) => Ok(Json(
            json!({ "state": state, "outcome": outcome, "verdict": verdict }),
        )),
        None => Err(ApiError(Refusal::new(
            404,
            "not_found",
            format!("no task {id} of yours"),
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MasksRequest {
    instance: String,
    lease: String,
    mask_sha256: String,
}

async fn masks(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let caller = auth(&st, &headers, Role::Worker, "masks").await?;
    let id = parse_id(&id)?;
    let what = format!("masks of job {id}");
    let req: MasksRequest = match json_body(body) {
        Ok(r) => r,
        Err(r) => return Err(refuse(&st, &caller.name, &what, r).await),
    };
    let worker = worker_id(&caller, &req.instance);
    match db(&st, move |s, _| {
        s.masks(id, &worker, &req.lease, &req.mask_sha256)
    })
    .await
    {
        Ok(from) => Ok(Json(json!({ "reused_from": from }))),
        Err(ApiError(r)) if r.status != 500 => Err(refuse(&st, &caller.name, &what, r).await),
        Err(e) => Err(e),
    }
}
