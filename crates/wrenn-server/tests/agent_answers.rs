//! The agent client reads bounded answers: an agent that answers more JSON than the limit, or
//! an endless error body, is a protocol error, not memory the control plane holds.

use axum::body::Body;
use axum::routing::get;
use wrenn_server::agent::http::{HttpAgent, MAX_ANSWER_BYTES};
use wrenn_server::agent::{AgentApiError, HostAgent};

async fn agent(router: axum::Router) -> HttpAgent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    HttpAgent::new(&base, "token").unwrap()
}

/// A body of `n` bytes sent in chunks, without a length.
fn chunked(n: usize) -> Body {
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = n / chunk.len() + 1;
    Body::from_stream(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ))
}

#[tokio::test]
async fn answers_over_the_limit_are_refused() {
    let big = agent(axum::Router::new().route(
        "/v1/sandboxes",
        get(|| async { chunked(MAX_ANSWER_BYTES + 1) }),
    ))
    .await;
    let e = big.list_sandboxes().await.unwrap_err();
    assert!(
        matches!(&e, AgentApiError::Protocol(m) if m.contains("over")),
        "{e:?}"
    );

    let sized = agent(axum::Router::new().route(
        "/v1/sandboxes",
        get(|| async { vec![b' '; MAX_ANSWER_BYTES + 1] }),
    ))
    .await;
    let e = sized.list_sandboxes().await.unwrap_err();
    assert!(
        matches!(&e, AgentApiError::Protocol(m) if m.contains("over")),
        "{e:?}"
    );

    let endless_error = agent(axum::Router::new().route(
        "/v1/sandboxes",
        get(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                chunked(8 * 1024 * 1024),
            )
        }),
    ))
    .await;
    let e = endless_error.list_sandboxes().await.unwrap_err();
    assert!(
        matches!(&e, AgentApiError::Protocol(m) if m.contains("over")),
        "{e:?}"
    );

    let fine = agent(axum::Router::new().route("/v1/sandboxes", get(|| async { "[]" }))).await;
    assert!(fine.list_sandboxes().await.unwrap().is_empty());
}
