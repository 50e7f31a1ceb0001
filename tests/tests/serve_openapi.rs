//! The OpenAPI document (`docs/openapi.json`) and the handlers agree: the document's paths
//! are exactly serve's routes plus ingest's `POST /v1/events`, each route's query parameters
//! are exactly those its handler accepts, every path parameter is documented, and the
//! document serve answers at `/openapi.json` is the checked-in file. (The response shapes
//! are checked against the document's schemas by `serve_api`, for every answer it gets.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use chatpipe_tests::serve_support;
use serde_json::Value;
use serve_support::{config, openapi, Serve};

#[test]
fn the_document_lists_exactly_the_routes_and_their_parameters() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let mut routed: BTreeSet<&str> = chatpipe_serve::route_table().iter().map(|(p, _)| *p).collect();
    routed.insert(chatpipe_ingest::metrics::route::EVENTS);
    assert_eq!(documented, routed, "documented paths vs routes");
    assert!(paths[chatpipe_ingest::metrics::route::EVENTS]["post"].is_object(), "ingest takes POST");

    for (path, params) in chatpipe_serve::route_table() {
        let op = &paths[path]["get"];
        assert!(op.is_object(), "GET {path} is not documented");
        assert_eq!(paths[path].as_object().unwrap().len(), 1, "{path}: only GET is served");
        let list = op["parameters"].as_array().unwrap();
        let of = |kind: &str| -> BTreeSet<String> {
            list.iter().filter(|p| p["in"] == kind).map(|p| p["name"].as_str().unwrap().to_owned()).collect()
        };
        let query: BTreeSet<String> = params.iter().map(|s| s.to_string()).collect();
        assert_eq!(of("query"), query, "query parameters of {path}");
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(of("path"), in_template, "path parameters of {path}");
        for (status, resp) in op["responses"].as_object().unwrap() {
            let content = resp["content"].as_object().unwrap();
            assert!(!content.is_empty(), "{path} {status} has no content");
        }
        // every JSON schema reference resolves
        check_refs(&doc, op);
    }
}

fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref {r}");
                check_refs(doc, &doc["components"]["schemas"][name]);
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_the_checked_in_document_and_every_documented_route() {
    // no HBase behind it: routes still answer (503/404 JSON), never `no_route`
    let port = chatpipe_tests::free_port();
    let serve = Serve::start(config(&format!("127.0.0.1:{port}"))).await;
    let r = serve.client.get(format!("{}/openapi.json", serve.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap();
    assert_eq!(text, on_disk);
    for (path, _) in chatpipe_serve::route_table() {
        let concrete = path.replace("{session}", "1").replace("{user}", "1");
        let (status, body) = serve.get(&concrete).await;
        assert_ne!(body["code"], "no_route", "{path} is documented but not routed");
        assert!([503, 404].contains(&status), "{path}: {status} {body}");
    }
    serve.handle.shutdown().await.unwrap();
}
