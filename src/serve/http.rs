//! The HTTP routes (axum): inference, metadata, health, metrics and the
//! repository's load (hot reload). Every failure is a JSON body
//! `{"error": "...", "field": "..."}` with the status the KServe
//! protocol and HTTP give it.

use super::batcher::{Answer, Job, Payload};
use super::metrics::{self, ErrorKind, ServerMetrics};
use super::model::{describe, Model};
use super::request::{self, InputSpec, RequestError};
use super::ServeConfig;
use crate::error::{Error, Result};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests accepted by the infer route and requests it answered; equal
/// after a graceful shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub accepted: u64,
    pub answered: u64,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    models: Vec<Arc<Model>>,
    max_rows: usize,
    max_body: usize,
    timeout: Duration,
    access_log: bool,
    allow_load_path: bool,
    accepted: AtomicU64,
    answered: AtomicU64,
    ready: AtomicBool,
    server: ServerMetrics,
}

impl AppState {
    pub fn new(models: Vec<Arc<Model>>, cfg: &ServeConfig) -> Self {
        AppState(Arc::new(Inner {
            models,
            max_rows: cfg.max_request_rows.min(cfg.limits.max_batch).max(1),
            max_body: cfg.max_body,
            timeout: cfg.timeout,
            access_log: cfg.access_log,
            allow_load_path: cfg.allow_load_path,
            accepted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            ready: AtomicBool::new(true),
            server: ServerMetrics::default(),
        }))
    }

    fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.0.models.iter().find(|m| m.name == name)
    }

    pub fn reload_all(&self) -> Vec<(String, Result<u64>)> {
        self.0
            .models
            .iter()
            .map(|m| (m.name.clone(), m.reload(None).map(|v| v.generation)))
            .collect()
    }

    pub fn close_models(&self) {
        for m in &self.0.models {
            m.close();
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            accepted: self.0.accepted.load(Ordering::SeqCst),
            answered: self.0.answered.load(Ordering::SeqCst),
        }
    }
}

/// Serve until `shutdown` resolves, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Totals> {
    let s = state.clone();
    let flag = state.clone();
    let app = Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { json(StatusCode::OK, r#"{"live":true}"#) }),
        )
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/metrics", get(metrics_page))
        .fallback(|| async {
            Failure::new(404, "path", "no such route; see /v2/models/{name}/infer").into_response()
        })
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            flag.0.ready.store(false, Ordering::SeqCst);
        })
        .await
        .map_err(|e| Error::Usage(format!("the HTTP server failed: {e}")))?;
    Ok(s.totals())
}

fn json(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.into(),
    )
        .into_response()
}

/// A refused request.
struct Failure(RequestError);

impl Failure {
    fn new(status: u16, field: &str, message: impl Into<String>) -> Self {
        Failure(RequestError {
            status,
            field: field.to_owned(),
            message: message.into(),
        })
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = json(status, self.0.body());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

async fn server_metadata() -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "name": "gpurt",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["model_repository", "classification"],
        })
        .to_string(),
    )
}

async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.0.ready.load(Ordering::SeqCst);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, format!(r#"{{"ready":{ready}}}"#))
}

fn unknown(s: &AppState, name: &str) -> Failure {
    s.0.server.unrouted_errors.fetch_add(1, Ordering::Relaxed);
    let names: Vec<&str> = s.0.models.iter().map(|m| m.name.as_str()).collect();
    Failure::new(
        404,
        "model",
        format!("no model named '{name}' (serving: {})", names.join(", ")),
    )
}

async fn model_ready(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.model(&name) {
        Some(_) => json(
            StatusCode::OK,
            format!(r#"{{"name":{:?},"ready":true}}"#, name),
        ),
        None => unknown(&s, &name).into_response(),
    }
}

async fn model_metadata(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(m) = s.model(&name) else {
        return unknown(&s, &name).into_response();
    };
    let v = m.version();
    let classes = v.class_names.len();
    let (shape, datatypes): (Vec<i64>, &[&str]) = match &v.input {
        InputSpec::Image { dims, .. } => (
            std::iter::once(-1)
                .chain(dims.iter().map(|&d| d as i64))
                .collect(),
            &["FP32", "UINT8", "BYTES (base64 PNG, shape [n])"],
        ),
        InputSpec::Text { .. } => (vec![-1], &["BYTES (strings)"]),
    };
    json(
        StatusCode::OK,
        serde_json::json!({
            "name": m.name,
            "versions": [v.generation.to_string()],
            "platform": "gpurt",
            "inputs": [{"name": v.input.name(), "datatype": datatypes[0].split(' ').next(), "shape": shape}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "classes", "datatype": "BYTES", "shape": [-1, -1]},
            ],
            "parameters": {
                "model": v.model,
                "run": v.run.display().to_string(),
                "input": describe(&v.input),
                "accepted_datatypes": datatypes,
                "classes": v.class_names,
                "precision": "f32",
                "device": v.device,
                "max_batch": m.limits().max_batch,
                "max_request_examples": s.0.max_rows,
            },
        })
        .to_string(),
    )
}

async fn metrics_page(State(s): State<AppState>) -> Response {
    let ms: Vec<&metrics::ModelMetrics> = s.0.models.iter().map(|m| m.metrics()).collect();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        metrics::render(&ms, &s.0.server),
    )
        .into_response()
}

/// One unit of a count (the requests being decoded) while alive.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn start(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the access log says of a request beyond its status.
#[derive(Default)]
struct Served {
    rows: usize,
    batch: usize,
    version: u64,
    id: Option<String>,
}

async fn infer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    s.0.accepted.fetch_add(1, Ordering::SeqCst);
    let mut served = Served::default();
    let outcome = match tokio::time::timeout(
        s.0.timeout,
        infer_inner(&s, &name, &headers, body, &mut served),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            504,
            "request",
            format!("no answer within {} ms", s.0.timeout.as_millis()),
        )),
    };
    let (status, response) = match outcome {
        Ok(body) => (200, json(StatusCode::OK, body)),
        Err(f) => (f.0.status, f.into_response()),
    };
    if let Some(m) = s.model(&name) {
        let mm = m.metrics();
        mm.requests.fetch_add(1, Ordering::Relaxed);
        if status == 200 {
            mm.examples.fetch_add(served.rows as u64, Ordering::Relaxed);
        } else {
            mm.error(ErrorKind::from_status(status));
        }
        mm.latency.observe(start.elapsed().as_secs_f64());
    }
    if s.0.access_log {
        log_line(&name, status, &served, start);
    }
    s.0.answered.fetch_add(1, Ordering::SeqCst);
    response
}

fn log_line(model: &str, status: u16, served: &Served, start: Instant) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let id = served
        .id
        .as_deref()
        .map(|i| format!(" id={i:?}"))
        .unwrap_or_default();
    eprintln!(
        "ts={ts:.6} route=infer model={model:?} status={status} examples={} batch={} version={} latency_us={}{id}",
        served.rows,
        served.batch,
        served.version,
        start.elapsed().as_micros()
    );
}

async fn infer_inner(
    s: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Body,
    served: &mut Served,
) -> std::result::Result<String, Failure> {
    let Some(model) = s.model(name) else {
        return Err(unknown(s, name));
    };
    let _in_flight = Counted::start(&model.shared.in_flight);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Failure::new(
                415,
                "content-type",
                format!("'{ct}' is not application/json"),
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.0.max_body as u64) {
        return Err(too_large(s));
    }
    let decoding = Counted::start(&model.shared.decoding);
    let bytes = axum::body::to_bytes(body, s.0.max_body)
        .await
        .map_err(|e| {
            if format!("{e:?}").contains("LengthLimit") {
                too_large(s)
            } else {
                Failure::new(400, "body", format!("could not be read: {e}"))
            }
        })?;
    let version = model.version();
    let req = request::decode(&bytes, &version.input, s.0.max_rows).map_err(Failure)?;
    served.rows = req.n;
    served.id = req.id.clone();
    // Counted out before it is queued: a worker that finds the job must
    // not wait for the job itself.
    drop(decoding);
    let payload = Payload::from(req.rows);
    let answer = queued(model, payload, req.n).await.map_err(|e| {
        if e == QUEUE_FULL {
            let depth = model.metrics().queue_depth.load(Ordering::Relaxed);
            Failure::new(
                503,
                "queue",
                format!(
                    "the model's queue is full ({depth} of {} requests waiting) or the server is stopping; retry",
                    model.limits().max_queue
                ),
            )
        } else {
            Failure::new(500, "model", e)
        }
    })?;
    served.batch = answer.batch;
    served.version = answer.version.generation;
    Ok(request::encode_response(
        name,
        answer.version.generation,
        req.id.as_deref(),
        &answer.logits,
        &answer.version.class_names,
        req.top_k,
    ))
}

/// What [`queued`] says when the queue refuses a job.
const QUEUE_FULL: &str = "queue full";

/// Queue the request for the batching workers and wait for its answer.
async fn queued(model: &Model, payload: Payload, n: usize) -> std::result::Result<Answer, String> {
    if let Some(answer) = model.try_alone(&payload, n) {
        return answer;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        payload,
        n,
        reply: tx,
    };
    if model.submit(job).is_err() {
        return Err(QUEUE_FULL.into());
    }
    rx.await
        .unwrap_or_else(|_| Err("the worker ended before answering".into()))
}

fn too_large(s: &AppState) -> Failure {
    Failure::new(
        413,
        "body",
        format!("larger than the limit of {} bytes", s.0.max_body),
    )
}

#[derive(serde::Deserialize, Default)]
struct LoadRequest {
    #[serde(default)]
    parameters: LoadParameters,
}

#[derive(serde::Deserialize, Default)]
struct LoadParameters {
    run: Option<std::path::PathBuf>,
}

async fn load(State(s): State<AppState>, Path(name): Path<String>, body: Body) -> Response {
    let Some(model) = s.model(&name).cloned() else {
        return unknown(&s, &name).into_response();
    };
    let bytes = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return Failure::new(413, "body", "a load request is at most 64 KiB").into_response()
        }
    };
    let req: LoadRequest = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        LoadRequest::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return Failure::new(400, "body", format!("invalid load request JSON: {e}"))
                    .into_response()
            }
        }
    };
    if req.parameters.run.is_some() && !s.0.allow_load_path {
        return Failure::new(
            403,
            "parameters.run",
            "loading another folder needs the server's --allow-load-path; without it a load reloads the folder being served",
        )
        .into_response();
    }
    let start = Instant::now();
    let result = tokio::task::spawn_blocking(move || model.reload(req.parameters.run)).await;
    match result {
        Ok(Ok(v)) => {
            if s.0.access_log {
                eprintln!(
                    "route=load model={name:?} status=200 version={} run={:?} compile_ms={}",
                    v.generation,
                    v.run.display().to_string(),
                    start.elapsed().as_millis()
                );
            }
            json(
                StatusCode::OK,
                serde_json::json!({"name": name, "version": v.generation.to_string(), "run": v.run.display().to_string()})
                    .to_string(),
            )
        }
        Ok(Err(e)) => {
            Failure::new(400, "run", format!("{e}; still serving the old version")).into_response()
        }
        Err(_) => Failure::new(
            500,
            "run",
            "the reload panicked; still serving the old version",
        )
        .into_response(),
    }
}
