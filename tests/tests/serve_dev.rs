//! `chatpipe dev` runs serve beside the pipeline: with a stream of user 2 open on the read
//! API before anything is posted, a direct message posted to ingest arrives on that stream as
//! a `message` event with the id ingest answered, and is then read back through serve's
//! timeline, inbox and sessions endpoints (oracle: the posted event itself); `/openapi.json`
//! is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatpipe_tests::serve_support;
use chatpipe_tests::{chatpipe_binary, free_port, tansu_binary};
use serde_json::{json, Value};

/// A `chatpipe dev` process; killed when dropped.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_read_api_and_pushes_a_posted_message() {
    let dir = tempfile::tempdir().unwrap();
    let (http, kafka, thrift, metrics, serve) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let _dev = Dev(Command::new(chatpipe_binary().unwrap())
        .args(["dev", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--kafka-listen", &format!("127.0.0.1:{kafka}")])
        .args(["--thrift-listen", &format!("127.0.0.1:{thrift}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--serve-listen", &format!("127.0.0.1:{serve}")])
        .arg("--tansu")
        .arg(tansu_binary().unwrap())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    let client = reqwest::Client::new();
    let dev_log = || std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();

    // ready: the shared /readyz covers every role's components, serve's (hbase, push, serve)
    // included
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{metrics}/readyz")).send().await {
            if r.status().as_u16() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "dev did not become ready:\n{}", dev_log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let base = format!("http://127.0.0.1:{serve}");
    let (status, doc) = get_json(&client, &format!("{base}/openapi.json")).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));

    // user 2's stream, open before the post
    let mut stream = serve_support::Stream::connect(&client, &base, 2, None).await;
    let event = json!({"type": "message", "session_id": "4242", "session_kind": "direct", "sender_id": 1,
                       "recipient_id": 2, "message": {"kind": "text", "body": "hello through dev"}});
    let r = client
        .post(format!("http://127.0.0.1:{http}/v1/events"))
        .header("content-type", "application/json")
        .bearer_auth("anything") // dev runs without keys; a key is ignored
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let accepted: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let id = accepted["results"][0]["message_id"].as_str().unwrap().to_owned();
    let e = loop {
        let e = stream.next().await;
        if e.event == "message" {
            break e;
        }
    };
    assert_eq!(
        (&e.data["message_id"], &e.data["session_id"], &e.data["sender_id"], &e.data["preview"]),
        (&json!(id), &json!("4242"), &json!("1"), &json!("hello through dev"))
    );
    drop(stream);

    // and readable: the timeline, user 2's inbox and sessions (the sink may still be writing)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t) = get_json(&client, &format!("{base}/v1/sessions/4242/messages")).await;
        let (_, inbox) = get_json(&client, &format!("{base}/v1/users/2/inbox")).await;
        let (_, sessions) = get_json(&client, &format!("{base}/v1/users/2/sessions")).await;
        let ok = t["messages"][0]["message_id"] == json!(id)
            && t["messages"][0]["body"] == json!("hello through dev")
            && inbox["entries"][0]["message_id"] == json!(id)
            && sessions["sessions"][0]["session_id"] == json!("4242")
            && sessions["sessions"][0]["unread"] == json!(1);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "not readable through serve:\n{t}\n{inbox}\n{sessions}\n{}", dev_log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
