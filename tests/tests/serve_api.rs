//! `chatpipe serve` against the HBase emulator holding a dataset written in the DESIGN v2
//! layout: every endpoint's answer equals an oracle computed from the dataset alone
//! (timelines paged both ways, catch-up by seq, inbox with a large group merged from its
//! timeline and deduplicated against the inbox rows it had while small, sessions with
//! unread, members paged, profiles), every answer matches the OpenAPI document's schema for
//! its status, bad input gets the documented JSON errors (400 naming the parameter, 404,
//! 401, 429), a warm timeline page costs exactly one HBase operation and a warm inbox page
//! one plus one per large group (two more with the large-group cache off).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chatpipe_tests::serve_support;
use chatpipe_tests::TestHbase;
use serde_json::Value;
use serve_support::{check_response, config, openapi, Model, Serve, FANOUT_MAX, UNKNOWN_SESSION, UNKNOWN_USER};

const MESSAGES: &str = "/v1/sessions/{session}/messages";
const INBOX: &str = "/v1/users/{user}/inbox";
const SESSIONS: &str = "/v1/users/{user}/sessions";

/// GETs `path`, checks the answer against the document under `template`, returns it.
async fn get(serve: &Serve, doc: &Value, template: &str, path: &str) -> (u16, Value) {
    let (status, body) = serve.get(path).await;
    check_response(doc, template, "get", status, &body);
    (status, body)
}

/// Pages through `path` with `limit`, following `cursor_field` as `cursor_param`.
#[allow(clippy::too_many_arguments)]
async fn all_pages(
    serve: &Serve,
    doc: &Value,
    template: &str,
    path: &str,
    items: &str,
    limit: usize,
    cursor_field: &str,
    cursor_param: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{path}?limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&{cursor_param}={c}"));
        }
        let (status, body) = get(serve, doc, template, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let page = body[items].as_array().unwrap();
        assert!(page.len() <= limit);
        out.extend(page.iter().cloned());
        match &body[cursor_field] {
            Value::Null => return out,
            Value::String(s) => cursor = Some(s.clone()),
            Value::Number(n) => cursor = Some(n.to_string()),
            other => panic!("{cursor_field}: {other}"),
        }
    }
    panic!("{path}: more than 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_what_the_dataset_implies() {
    let hbase = TestHbase::start();
    let model = Model::build();
    let thrift = hbase.thrift();
    let m = model.clone();
    tokio::task::spawn_blocking(move || m.write(&thrift)).await.unwrap();
    let serve = Serve::start(config(&hbase.thrift())).await;
    let doc = openapi();

    for s in &model.sessions {
        let id = s.id;
        // the whole timeline, newest first, in pages of every size
        for limit in [1, 3, 200] {
            let got = all_pages(
                &serve,
                &doc,
                MESSAGES,
                &format!("/v1/sessions/{id}/messages"),
                "messages",
                limit,
                "next_before",
                "before",
            )
            .await;
            assert_eq!(got, model.timeline(id), "session {id} limit {limit}");
        }
        // catch-up from every seq, oldest first, in pages of 2
        let last = s.msgs.len() as u64;
        for after in 0..=last {
            let mut got = Vec::new();
            let mut next = Some(after);
            while let Some(a) = next {
                let (status, body) =
                    get(&serve, &doc, MESSAGES, &format!("/v1/sessions/{id}/messages?after_seq={a}&limit=2")).await;
                assert_eq!(status, 200);
                assert_eq!(body["order"], "oldest_first");
                assert_eq!(body["last_seq"], last);
                let page = body["messages"].as_array().unwrap().clone();
                assert!(!page.is_empty() || body["next_after_seq"].is_null(), "no progress: {body}");
                got.extend(page);
                next = body["next_after_seq"].as_u64();
            }
            assert_eq!(got, model.after_seq(id, after), "session {id} after_seq {after}");
        }
        let (status, body) = get(&serve, &doc, "/v1/sessions/{session}", &format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, model.session_json(id));
        for limit in [1, 3, 200] {
            let got = all_pages(
                &serve,
                &doc,
                "/v1/sessions/{session}/members",
                &format!("/v1/sessions/{id}/members"),
                "members",
                limit,
                "next_after",
                "after",
            )
            .await;
            assert_eq!(got, model.members(id), "members of {id}, limit {limit}");
        }
    }
    // the dataset must exercise what it claims to
    let inbox1 = model.inbox(1);
    assert!(inbox1.iter().any(|e| e["source"] == "timeline"), "user 1 has merged entries");
    assert!(
        inbox1.iter().any(|e| e["source"] == "inbox" && e["session_id"] == "1003"),
        "and the large group's early rows"
    );
    for user in model.users() {
        for limit in [1, 4, 200] {
            let got = all_pages(
                &serve,
                &doc,
                INBOX,
                &format!("/v1/users/{user}/inbox"),
                "entries",
                limit,
                "next_before",
                "before",
            )
            .await;
            assert_eq!(got, model.inbox(user), "inbox of {user}, limit {limit}");
        }
        for limit in [1, 2, 200] {
            let got = all_pages(
                &serve,
                &doc,
                SESSIONS,
                &format!("/v1/users/{user}/sessions"),
                "sessions",
                limit,
                "next_before",
                "before",
            )
            .await;
            assert_eq!(got, model.user_sessions(user), "sessions of {user}, limit {limit}");
        }
        let (status, body) = get(&serve, &doc, "/v1/users/{user}", &format!("/v1/users/{user}")).await;
        assert_eq!(status, 200);
        assert_eq!(Some(body), model.profile(user));
    }
    assert!(model.user_sessions(1).iter().any(|s| s["unread"].as_u64() > Some(0)), "some unread");

    // a warm timeline page is one HBase scan
    let route = MESSAGES;
    let (sum0, n0) = serve.histogram(chatpipe_serve::metrics::REQUEST_HBASE_CALLS, route);
    let (status, _) = serve.get("/v1/sessions/1003/messages?limit=5").await;
    assert_eq!(status, 200);
    let (sum1, n1) = serve.histogram(chatpipe_serve::metrics::REQUEST_HBASE_CALLS, route);
    assert_eq!((sum1 - sum0, n1 - n0), (1.0, 1), "one HBase operation for a timeline page");
    // a warm inbox page (user 1's large groups cached by the pages above): the inbox scan
    // and one scan per large group (user 1 is in one)
    let large_groups_of_1 = model
        .sessions
        .iter()
        .filter(|s| s.kind == "group" && s.members.len() as u64 > FANOUT_MAX && s.members.iter().any(|m| m.user == 1))
        .count();
    assert_eq!(large_groups_of_1, 1);
    let (sum0, _) = serve.histogram(chatpipe_serve::metrics::REQUEST_HBASE_CALLS, INBOX);
    serve.get("/v1/users/1/inbox?limit=5").await;
    let (sum1, _) = serve.histogram(chatpipe_serve::metrics::REQUEST_HBASE_CALLS, INBOX);
    assert_eq!(sum1 - sum0, 1.0 + large_groups_of_1 as f64, "inbox scan + one per large group");
    serve.handle.shutdown().await.unwrap();

    // without the cache every page also reads the user's sessions (a scan) and their sizes
    // (a multi-get), and answers the same
    let mut cfg = config(&hbase.thrift());
    cfg.inbox_cache_ttl = std::time::Duration::ZERO;
    let serve = Serve::start(cfg).await;
    for _ in 0..2 {
        let (sum0, _) = serve.histogram(chatpipe_serve::metrics::REQUEST_HBASE_CALLS, INBOX);
        let (status, body) = serve.get("/v1/users/1/inbox?limit=200").await;
        let (sum1, _) = serve.histogram(chatpipe_serve::metrics::REQUEST_HBASE_CALLS, INBOX);
        assert_eq!((status, &body["entries"]), (200, &serde_json::json!(model.inbox(1))));
        assert_eq!(sum1 - sum0, 3.0 + large_groups_of_1 as f64);
    }
    serve.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_naming_the_parameter() {
    let hbase = TestHbase::start();
    let model = Model::build();
    let thrift = hbase.thrift();
    tokio::task::spawn_blocking(move || model.write(&thrift)).await.unwrap();
    let serve = Serve::start(config(&hbase.thrift())).await;
    let doc = openapi();

    for (template, path) in [
        (MESSAGES, format!("/v1/sessions/{UNKNOWN_SESSION}/messages")),
        (MESSAGES, format!("/v1/sessions/{UNKNOWN_SESSION}/messages?after_seq=0")),
        ("/v1/sessions/{session}", format!("/v1/sessions/{UNKNOWN_SESSION}")),
        ("/v1/sessions/{session}/members", format!("/v1/sessions/{UNKNOWN_SESSION}/members")),
        ("/v1/users/{user}", format!("/v1/users/{UNKNOWN_USER}")),
        (INBOX, format!("/v1/users/{UNKNOWN_USER}/inbox")),
        (SESSIONS, format!("/v1/users/{UNKNOWN_USER}/sessions")),
    ] {
        let (status, body) = get(&serve, &doc, template, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found");
    }
    let cases: &[(&str, &str, &str)] = &[
        (MESSAGES, "/v1/sessions/abc/messages", "session"),
        (MESSAGES, "/v1/sessions/-1/messages", "session"),
        (MESSAGES, "/v1/sessions/18446744073709551616/messages", "session"),
        (MESSAGES, "/v1/sessions/1001/messages?limit=0", "limit"),
        (MESSAGES, "/v1/sessions/1001/messages?limit=201", "limit"),
        (MESSAGES, "/v1/sessions/1001/messages?limit=ten", "limit"),
        (MESSAGES, "/v1/sessions/1001/messages?before=x1", "before"),
        (MESSAGES, "/v1/sessions/1001/messages?after_seq=-3", "after_seq"),
        (MESSAGES, "/v1/sessions/1001/messages?after_seq=1&before=5", "after_seq"),
        (MESSAGES, "/v1/sessions/1001/messages?cursor=5", "cursor"),
        (MESSAGES, "/v1/sessions/1001/messages?limit=5&limit=6", "limit"),
        (INBOX, "/v1/users/01/inbox", "user"),
        (INBOX, "/v1/users/1/inbox?before=1.5", "before"),
        (SESSIONS, "/v1/users/1/sessions?before=12", "before"),
        (SESSIONS, "/v1/users/1/sessions?before=x.1", "before"),
        ("/v1/sessions/{session}/members", "/v1/sessions/1001/members?after=me", "after"),
        ("/v1/users/{user}", "/v1/users/1?limit=2", "limit"),
        ("/v1/users/{user}/stream", "/v1/users/x/stream", "user"),
    ];
    for (template, path, parameter) in cases {
        let (status, body) = get(&serve, &doc, template, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["errors"][0]["parameter"], *parameter, "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains(parameter), "{body}");
    }
    // an unknown route is a JSON 404 too, and push is off on this server
    let (status, body) = serve.get("/v1/nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("no_route")));
    let (status, body) = get(&serve, &doc, "/v1/users/{user}/stream", "/v1/users/1/stream").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("push_disabled")));
    serve.handle.shutdown().await.unwrap();

    // keys: 401 without or with a wrong key, 200 with a right one
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "app:s3cret-key\n").unwrap();
    let mut cfg = config(&hbase.thrift());
    cfg.insecure_no_auth = false;
    cfg.api_keys_file = Some(keys);
    cfg.rate_limit_per_second = 1;
    cfg.rate_limit_burst = 3;
    let mut serve = Serve::start(cfg).await;
    let (status, body) = get(&serve, &doc, "/v1/sessions/{session}", "/v1/sessions/1001").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("missing_api_key")));
    serve.key = Some("wrong".into());
    let (status, body) = get(&serve, &doc, "/v1/sessions/{session}", "/v1/sessions/1001").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("invalid_api_key")));
    serve.key = Some("s3cret-key".into());
    // a burst of 3 at 1/s: the first request passes, and requests sent back to back are
    // refused with 429 once the bucket is empty
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, body) = get(&serve, &doc, "/v1/sessions/{session}", "/v1/sessions/1001").await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(body["code"], "rate_limited");
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses.len() >= 4, "the burst of 3 passes first: {statuses:?}");
    serve.handle.shutdown().await.unwrap();
}
