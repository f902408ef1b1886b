//! Every path and method of the shared API spec is routed: none answers the router's
//! `404 not_found` or `405 method_not_allowed`. The served `openapi.yaml` keeps the shared
//! spec exactly and only adds to it (responses, codes, fields).

mod support;

use reqwest::Method;
use support::TestServer;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Whether `served` holds `seed`: every key of a seed mapping with a value that holds the
/// seed's, every element of a seed sequence at its place, every scalar equal. The path of the
/// first difference otherwise.
fn contains(served: &serde_yaml::Value, seed: &serde_yaml::Value, at: &str) -> Result<(), String> {
    use serde_yaml::Value;
    match (served, seed) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in b {
                let here = format!("{at}/{}", serde_yaml::to_string(k).unwrap().trim());
                let got = a.get(k).ok_or_else(|| here.clone())?;
                contains(got, v, &here)?;
            }
            Ok(())
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() >= b.len() => {
            for (i, v) in b.iter().enumerate() {
                contains(&a[i], v, &format!("{at}/{i}"))?;
            }
            Ok(())
        }
        (a, b) if a == b => Ok(()),
        _ => Err(at.to_string()),
    }
}

#[test]
fn containment_sees_changes_and_allows_additions() {
    let seed: serde_yaml::Value = serde_yaml::from_str("a: {b: 1, c: [x, y]}").unwrap();
    let added: serde_yaml::Value = serde_yaml::from_str("a: {b: 1, c: [x, y, z], d: 2}").unwrap();
    let changed: serde_yaml::Value = serde_yaml::from_str("a: {b: 2, c: [x, y]}").unwrap();
    let dropped: serde_yaml::Value = serde_yaml::from_str("a: {c: [x, y]}").unwrap();
    assert!(contains(&added, &seed, "").is_ok());
    assert_eq!(contains(&changed, &seed, ""), Err("/a/b".into()));
    assert_eq!(contains(&dropped, &seed, ""), Err("/a/b".into()));
}

#[tokio::test]
async fn every_spec_operation_is_routed() {
    let spec_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/spec/openapi.yaml"
    );
    let text = std::fs::read_to_string(spec_path)
        .unwrap_or_else(|e| panic!("cannot read the shared spec at {spec_path}: {e}"));
    let spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // The copy served at /openapi.yaml holds the whole shared spec, unchanged.
    let served: serde_yaml::Value = serde_yaml::from_str(wrenn_server::api::OPENAPI_YAML).unwrap();
    if let Err(at) = contains(&served, &spec, "") {
        panic!("crates/wrenn-server/openapi.yaml changes the shared spec at {at}");
    }

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
