//! `chatpipe dev` as a user runs it: starts from a fresh data directory, accepts a posted
//! message that `chatpipe query timeline` then reads back; a second start reuses the data;
//! and `chatpipe load --events 20000 --verify` against it reports nothing missing or
//! duplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatpipe_tests::{chatpipe_binary, free_port, tansu_binary};

struct Dev {
    child: Child,
    http: u16,
    thrift: u16,
    metrics: u16,
}

impl Dev {
    fn start(dir: &std::path::Path, ports: (u16, u16, u16, u16)) -> Dev {
        let (http, kafka, thrift, metrics) = ports;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dev.log")).unwrap();
        let child = Command::new(chatpipe_binary().unwrap())
            .args(["dev", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--kafka-listen", &format!("127.0.0.1:{kafka}")])
            .args(["--thrift-listen", &format!("127.0.0.1:{thrift}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--tansu")
            .arg(tansu_binary().unwrap())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let dev = Dev { child, http, thrift, metrics };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", dev.metrics)).is_ok()
                && std::process::Command::new("curl")
                    .args(["-sf", &format!("http://127.0.0.1:{}/readyz", dev.metrics)])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                return dev;
            }
            assert!(
                Instant::now() < deadline,
                "dev did not become ready:\n{}",
                std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Ctrl-C, as a user stops it; waits for a clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "dev exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "dev did not stop after Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn post(&self, session: u64, body: &str) {
        let json = format!(
            r#"{{"type":"message","session_id":"{session}","session_kind":"direct","sender_id":1,"recipient_id":2,"message":{{"kind":"text","body":"{body}"}}}}"#
        );
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST", &format!("http://127.0.0.1:{}/v1/events", self.http)])
            .args(["-H", "content-type: application/json", "-H", "Authorization: Bearer anything", "-d", &json])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.ends_with("202"), "post answered {text}");
    }

    fn timeline(&self, session: u64) -> String {
        let out = Command::new(chatpipe_binary().unwrap())
            .args([
                "query",
                "timeline",
                "--hbase-thrift",
                &format!("127.0.0.1:{}", self.thrift),
                "--session",
                &session.to_string(),
                "--json",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_timeline(&self, session: u64, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = self.timeline(session);
            if t.contains(needle) {
                return t;
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared in the timeline: {t}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ports() -> (u16, u16, u16, u16) {
    (free_port(), free_port(), free_port(), free_port())
}

#[test]
fn dev_accepts_a_post_readable_by_query_and_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let ports = ports();
    let dev = Dev::start(dir.path(), ports);
    dev.post(4242, "hello from curl");
    let t = dev.wait_timeline(4242, "hello from curl");
    assert!(t.contains("\"session_id\":\"4242\""), "{t}");
    dev.stop();

    let dev = Dev::start(dir.path(), ports);
    // the first message is still there, and the pipeline still works
    assert!(dev.timeline(4242).contains("hello from curl"), "data was not reused");
    dev.post(4242, "second run");
    let t = dev.wait_timeline(4242, "second run");
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 2, "{t}");
    assert!(lines[0].contains("second run") && lines[1].contains("hello from curl"), "newest first: {t}");
    assert!(lines[0].contains("\"seq\":2") || lines[0].contains("\"seq\":\"2\""), "seq continues across restarts: {t}");
    dev.stop();
}

#[test]
fn load_twenty_thousand_verified_against_dev() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), ports());
    let (out_path, err_path) = (dir.path().join("load.out"), dir.path().join("load.err"));
    let mut load = Command::new(chatpipe_binary().unwrap())
        .args(["load", "--events", "20000", "--batch", "50", "--concurrency", "8", "--verify", "--quiet"])
        .args(["--url", &format!("http://127.0.0.1:{}", dev.http)])
        .args(["--hbase-thrift", &format!("127.0.0.1:{}", dev.thrift)])
        .args(["--metrics-url", &format!("http://127.0.0.1:{}/metrics", dev.metrics)])
        .args(["--verify-timeout", "300s"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    // load resends what ingest refused for as long as it runs: a pipeline that stops
    // accepting must fail this test with the stack's logs, not hang the run
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let status = loop {
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = load.kill();
            let _ = load.wait();
            panic!(
                "load did not finish within {LOAD_TIMEOUT:?}\n--- load:\n{}\n--- dev.log (tail):\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default(),
                tail(&std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    assert!(status.success(), "load failed: {stdout}\n{}", std::fs::read_to_string(&err_path).unwrap());
    assert!(stdout.contains(", 0 missing, 0 duplicated"), "{stdout}");
    let accepted: u64 =
        stdout.lines().find_map(|l| l.strip_prefix("verify:")?.split_whitespace().next()?.parse().ok()).unwrap();
    assert!(accepted >= 20_000, "{stdout}");
    dev.stop();
}

/// How long the 20,000-message load may take with its verification (a healthy dev stack
/// needs well under a minute to send them; `--verify-timeout` is 300 s).
const LOAD_TIMEOUT: Duration = Duration::from_secs(480);

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
