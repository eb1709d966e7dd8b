//! `docs/openapi.json` is the document the code generates: this fails when a handler, a type or
//! an error code changed and the copy was not regenerated (`HERALD_BLESS=1 cargo test -p
//! herald-standalone --test openapi` writes it).

#[test]
fn the_committed_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let generated = serde_json::to_string_pretty(&herald_standalone::openapi()).unwrap() + "\n";
    if std::env::var_os("HERALD_BLESS").is_some() {
        std::fs::write(path, &generated).expect("writing docs/openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: regenerate it with `HERALD_BLESS=1 cargo test -p herald-standalone --test openapi`"
    );
}

/// Every error code is in the document, and every operation answers errors in the one shape.
#[test]
fn every_error_code_and_every_operation_is_described() {
    let doc = herald_standalone::openapi();
    assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(codes.len(), herald_runtime::ErrorCode::ALL.len());
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/topics/{topic}/events",
        "/v1/events",
        "/v1/stream",
        "/api/updates",
        "/api/post-update",
        "/v1/auth/cookie",
        "/v1/telemetry/lag",
        "/",
        "/article",
        "/herald-lag.js",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not in the document");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for (status, answer) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') && path != "/readyz" {
                    let schema = &answer["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
