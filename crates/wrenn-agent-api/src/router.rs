//! [`router`]: any [`HostAgent`] served over HTTP. Each handler parses, makes one trait call
//! and writes the answer; errors are written by [`AgentApiError`]'s one mapping.

use crate::paths::{self, Route};
use crate::{relay_exec, AgentApiError, AgentResult, HostAgent};
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use wrenn_types::agent::{AgentErrorCode, CreateSandbox, FileQuery, SnapshotRequest};
use wrenn_types::envd::ExecRequest;
use wrenn_types::fs::{ListDirRequest, MakeDirRequest, MakeDirResponse, RemoveRequest};
use wrenn_types::observe::MetricsQuery;

type Agent = State<Arc<dyn HostAgent>>;

/// The agent API for `agent`, answering only requests with `Authorization: Bearer <token>`.
pub fn router(agent: Arc<dyn HostAgent>, token: &str) -> Router {
    let token: Arc<str> = token.into();
    Router::new()
        .operation(paths::HOST_INFO, host_info)
        .operation(paths::LIST_SANDBOXES, list_sandboxes)
        .operation(paths::CREATE_SANDBOX, create)
        .operation(paths::GET_SANDBOX, get_sandbox)
        .operation(paths::DESTROY_SANDBOX, destroy)
        .operation(paths::PAUSE, pause)
        .operation(paths::RESUME, resume)
        .operation(paths::SNAPSHOT, snapshot)
        .operation(paths::EXEC, exec)
        .operation(paths::EXEC_STREAM, exec_stream)
        .operation(paths::WRITE_FILE, write_file)
        .operation(paths::READ_FILE, read_file)
        .operation(paths::LIST_DIR, list_dir)
        .operation(paths::MAKE_DIR, make_dir)
        .operation(paths::REMOVE_PATH, remove_path)
        .operation(paths::LIST_TEMPLATES, list_templates)
        .operation(paths::DELETE_TEMPLATE, delete_template)
        .operation(paths::SANDBOX_METRICS, sandbox_metrics)
        .merge(crate::procs::routes())
        .merge(crate::pty::routes())
        .merge(crate::port::routes())
        .merge(crate::copy::routes())
        .fallback(|| async { AgentApiError::new(AgentErrorCode::NotFound, "no such route") })
        .layer(middleware::from_fn_with_state(token, auth))
        .with_state(agent)
}

/// Adding a handler at a [`Route`] (routes sharing a path are merged by axum); every route
/// module of this crate adds its handlers this way.
pub(crate) trait Operations<S> {
    fn operation<H: Handler<T, S>, T: 'static>(self, route: Route, handler: H) -> Self;
}

impl<S: Clone + Send + Sync + 'static> Operations<S> for Router<S> {
    fn operation<H: Handler<T, S>, T: 'static>(self, route: Route, handler: H) -> Self {
        let filter = MethodFilter::try_from(route.method).expect("a standard HTTP method");
        self.route(route.path, on(filter, handler))
    }
}

/// Compares the bearer token in constant time.
async fn auth(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())));
    if !ok {
        let e = AgentApiError::new(AgentErrorCode::Unauthorized, "missing or wrong agent token");
        return e.into_response();
    }
    next.run(req).await
}

/// A JSON body whose rejection is a `bad_request` in the agent's error body.
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AgentApiError;

    async fn from_request(req: Request, state: &S) -> AgentResult<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(AgentApiError::new(
                AgentErrorCode::BadRequest,
                e.body_text(),
            )),
        }
    }
}

async fn host_info(State(a): Agent) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.host_info().await?))
}

async fn list_sandboxes(State(a): Agent) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.list_sandboxes().await?))
}

async fn create(State(a): Agent, JsonBody(req): JsonBody<CreateSandbox>) -> AgentResult<Response> {
    Ok((StatusCode::CREATED, Json(a.create(&req).await?)).into_response())
}

async fn get_sandbox(State(a): Agent, Path(id): Path<String>) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.get_sandbox(&id).await?))
}

async fn destroy(State(a): Agent, Path(id): Path<String>) -> AgentResult<StatusCode> {
    a.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(a): Agent, Path(id): Path<String>) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.pause(&id).await?))
}

async fn resume(State(a): Agent, Path(id): Path<String>) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.resume(&id).await?))
}

async fn snapshot(
    State(a): Agent,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SnapshotRequest>,
) -> AgentResult<Response> {
    Ok((StatusCode::CREATED, Json(a.snapshot(&id, &req).await?)).into_response())
}

async fn exec(
    State(a): Agent,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.exec(&id, &req).await?))
}

/// The session is opened before the upgrade, so a missing or stopped sandbox is an ordinary
/// error answer.
async fn exec_stream(
    State(a): Agent,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> AgentResult<Response> {
    let session = a.exec_stream(&id).await?;
    Ok(ws
        .max_message_size(crate::MAX_WS_MESSAGE)
        .max_frame_size(crate::MAX_WS_MESSAGE)
        .on_upgrade(move |socket| relay_exec(socket, session)))
}

async fn write_file(
    State(a): Agent,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> AgentResult<StatusCode> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    a.write_file(&id, &q.path, Box::pin(stream)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn read_file(
    State(a): Agent,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> AgentResult<Response> {
    let file = a.read_file_body(&id, &q.path).await?;
    let mut resp = Body::from_stream(file.stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = file.len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

/// A JSON body; a malformed one is a `bad_request`.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> AgentResult<T> {
    body.map(|Json(b)| b)
        .map_err(|e| AgentApiError::new(AgentErrorCode::BadRequest, e.body_text()))
}

async fn list_dir(
    State(a): Agent,
    Path(id): Path<String>,
    body: Result<Json<ListDirRequest>, JsonRejection>,
) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.list_dir(&id, &json_body(body)?).await?))
}

async fn make_dir(
    State(a): Agent,
    Path(id): Path<String>,
    body: Result<Json<MakeDirRequest>, JsonRejection>,
) -> AgentResult<impl IntoResponse> {
    let entry = a.make_dir(&id, &json_body(body)?.path).await?;
    Ok(Json(MakeDirResponse { entry }))
}

async fn remove_path(
    State(a): Agent,
    Path(id): Path<String>,
    body: Result<Json<RemoveRequest>, JsonRejection>,
) -> AgentResult<StatusCode> {
    a.remove_path(&id, &json_body(body)?.path).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_templates(State(a): Agent) -> AgentResult<impl IntoResponse> {
    Ok(Json(a.list_templates().await?))
}

async fn delete_template(State(a): Agent, Path(name): Path<String>) -> AgentResult<StatusCode> {
    a.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn sandbox_metrics(
    State(a): Agent,
    Path(id): Path<String>,
    q: Result<Query<MetricsQuery>, QueryRejection>,
) -> AgentResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| AgentApiError::new(AgentErrorCode::BadRequest, e.body_text()))?;
    Ok(Json(a.sandbox_metrics(&id, q.range_secs).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ByteStream, ExecSession, FileBody};
    use async_trait::async_trait;
    use tower::ServiceExt;
    use wrenn_types::agent::{Accel, HostInfo, SandboxInfo, TemplateInfo};
    use wrenn_types::envd::ExecResponse;

    /// Answers `host_info`; every sandbox is missing.
    struct Empty;

    fn missing() -> AgentApiError {
        AgentApiError::new(AgentErrorCode::NotFound, "sandbox x not found")
    }

    #[async_trait]
    impl HostAgent for Empty {
        async fn host_info(&self) -> AgentResult<HostInfo> {
            Ok(HostInfo {
                accel: Accel::Tcg,
                cpus: 1,
                total_memory_mb: 1,
                free_memory_mb: 1,
                running: 0,
                paused: 0,
                templates: vec![],
                pooled: 0,
                committed_memory_mb: 0,
                commit_limit_mb: 0,
                disk_free_mb: 0,
            })
        }
        async fn list_sandboxes(&self) -> AgentResult<Vec<SandboxInfo>> {
            Ok(vec![])
        }
        async fn create(&self, _: &CreateSandbox) -> AgentResult<SandboxInfo> {
            Err(AgentApiError::new(AgentErrorCode::Capacity, "full"))
        }
        async fn get_sandbox(&self, _: &str) -> AgentResult<SandboxInfo> {
            Err(missing())
        }
        async fn destroy(&self, _: &str) -> AgentResult<()> {
            Err(missing())
        }
        async fn pause(&self, _: &str) -> AgentResult<SandboxInfo> {
            Err(missing())
        }
        async fn resume(&self, _: &str) -> AgentResult<SandboxInfo> {
            Err(missing())
        }
        async fn snapshot(&self, _: &str, _: &SnapshotRequest) -> AgentResult<TemplateInfo> {
            Err(missing())
        }
        async fn exec(&self, _: &str, _: &ExecRequest) -> AgentResult<ExecResponse> {
            Err(AgentApiError::Transport("envd gone".into()))
        }
        async fn exec_stream(&self, _: &str) -> AgentResult<ExecSession> {
            Err(missing())
        }
        async fn write_file(&self, _: &str, _: &str, _: ByteStream) -> AgentResult<()> {
            Err(missing())
        }
        async fn read_file_body(&self, _: &str, _: &str) -> AgentResult<FileBody> {
            Err(missing())
        }
        async fn list_templates(&self) -> AgentResult<Vec<TemplateInfo>> {
            Ok(vec![])
        }
        async fn delete_template(&self, _: &str) -> AgentResult<()> {
            Err(missing())
        }
        async fn sandbox_metrics(
            &self,
            _: &str,
            range_secs: u32,
        ) -> AgentResult<Vec<wrenn_types::observe::MetricPoint>> {
            // One point whose time is the range asked, so the query's parsing shows.
            Ok(vec![wrenn_types::observe::MetricPoint {
                timestamp_unix: i64::from(range_secs),
                cpu_pct: 1.5,
                mem_bytes: 2,
                disk_bytes: 3,
            }])
        }
        async fn list_dir(
            &self,
            _: &str,
            _: &wrenn_types::fs::ListDirRequest,
        ) -> AgentResult<wrenn_types::fs::ListDirResponse> {
            Err(missing())
        }
        async fn make_dir(&self, _: &str, _: &str) -> AgentResult<wrenn_types::fs::FileEntry> {
            Err(missing())
        }
        async fn remove_path(&self, _: &str, _: &str) -> AgentResult<()> {
            Err(missing())
        }
    }

    const TOKEN: &str = "abc";

    async fn call(method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = router(Arc::new(Empty), TOKEN)
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn code_of(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn only_the_exact_token_passes() {
        assert_eq!(
            call("GET", paths::HOST_INFO.path, Some("abc"), "").await.0,
            200
        );
        for wrong in [Some("abd"), Some("abcd"), Some("ab"), None] {
            let (status, body) = call("GET", paths::HOST_INFO.path, wrong, "").await;
            assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
        }
        let (status, body) = call("GET", "/v1/nowhere", None, "").await;
        assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
    }

    #[tokio::test]
    async fn errors_are_written_with_their_status_and_code() {
        let (status, body) = call("GET", "/v1/nowhere", Some(TOKEN), "").await;
        assert_eq!((status, code_of(&body).as_str()), (404, "not_found"));
        let (status, body) = call("POST", paths::CREATE_SANDBOX.path, Some(TOKEN), "{").await;
        assert_eq!((status, code_of(&body).as_str()), (400, "bad_request"));
        let create = r#"{"id":"a","template":"t","vcpus":1,"memory_mb":128}"#;
        let (status, body) = call("POST", paths::CREATE_SANDBOX.path, Some(TOKEN), create).await;
        assert_eq!((status, code_of(&body).as_str()), (503, "capacity"));
        let exec = r#"{"cmd":"true"}"#;
        let (status, body) = call("POST", &paths::EXEC.fill("a"), Some(TOKEN), exec).await;
        assert_eq!((status, code_of(&body).as_str()), (500, "internal"));
        let (status, body) =
            call("DELETE", &paths::DESTROY_SANDBOX.fill("x"), Some(TOKEN), "").await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            r#"{"error":{"code":"not_found","message":"sandbox x not found"}}"#
        );
    }

    #[tokio::test]
    async fn metrics_take_their_range_from_the_query() {
        let path = format!("{}?range_secs=600", paths::SANDBOX_METRICS.fill("a"));
        let (status, body) = call("GET", &path, Some(TOKEN), "").await;
        assert_eq!(status, 200);
        let points: Vec<wrenn_types::observe::MetricPoint> = serde_json::from_str(&body).unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].timestamp_unix, 600);
        for bad in ["", "?range_secs=x", "?range_secs=-1"] {
            let path = format!("{}{bad}", paths::SANDBOX_METRICS.fill("a"));
            let (status, body) = call("GET", &path, Some(TOKEN), "").await;
            assert_eq!(
                (status, code_of(&body).as_str()),
                (400, "bad_request"),
                "{bad}"
            );
        }
    }
}
