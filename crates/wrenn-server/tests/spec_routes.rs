//! Every path and method of the shared API spec is routed: none answers the router's
//! `404 not_found` or `405 method_not_allowed`.

mod support;

use reqwest::Method;
use support::TestServer;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[tokio::test]
async fn every_spec_operation_is_routed() {
    let spec_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/spec/openapi.yaml"
    );
    let text = std::fs::read_to_string(spec_path)
        .unwrap_or_else(|e| panic!("cannot read the shared spec at {spec_path}: {e}"));
    let spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // The copy served at /openapi.yaml is the same document.
    let served: serde_yaml::Value = serde_yaml::from_str(wrenn_server::api::OPENAPI_YAML).unwrap();
    assert_eq!(
        served, spec,
        "crates/wrenn-server/openapi.yaml is out of date"
    );

    let t = TestServer::start().await;
    let paths = spec["paths"].as_mapping().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        let path = path.as_str().unwrap();
        // Fill path parameters.
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "github" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for m in METHODS {
            if item.get(m).is_none() {
                continue;
            }
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = t.req(method, &concrete).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_ne!(status, 405, "{m} {path} not routed: {body}");
            assert!(
                !(status == 404 && body.contains("\"not_found\"")),
                "{m} {path} not routed: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations found in the spec");
}
