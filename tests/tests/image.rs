#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The container image (`Dockerfile`), built and run with podman.
//!
//! `image_builds_and_runs_every_role_and_a_pipeline` builds the Dockerfile's `prebuilt`
//! target — the runtime stage with the `chatpipe` binary that `cargo build -p chatpipe` made
//! on this host, because no Rust toolchain image can be pulled here (the compiling default
//! target is the same runtime stage with the binary from a `rust:bookworm` build stage) — on
//! the local Debian bookworm base that `scripts/setup` makes with mmdebstrap, tags it as the
//! Helm chart's default image (`chatpipe/chatpipe:<version>`), and then:
//!
//! * checks the image: OCI labels (version, revision, source, licence), user 65532:65532 (the
//!   chart's securityContext), `chatpipe` as entrypoint, every shared library of the binary
//!   resolved in the image (OpenSSL 3 for librdkafka's TLS);
//! * runs `chatpipe --version` (the revision of the build) and `chatpipe <role> --help` for
//!   every subcommand the binary has, each as user 65532 with a read-only root filesystem;
//! * runs a pipeline from the image: `hbase-emulator`, `ingest`, `process`, `sink` and `serve`, each a
//!   container (read-only root, only `/tmp` and the data directories writable, as the chart
//!   mounts them) on the host network against a tansu broker started on the host; posts one
//!   event to the container's ingest and reads it back from HBase with `chatpipe query
//!   timeline` run from the image and from the `serve` container's read API
//!   (`GET /v1/sessions/4242/messages`); then stops the roles with SIGTERM and requires a
//!   clean exit (each drains).
//!
//! It is skipped, naming `scripts/setup`, only when podman cannot run a container or the
//! base image is missing; `scripts/test` sets `CHATPIPE_REQUIRE_IMAGE_TEST=1`, which turns
//! that skip into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chatpipe_tests::{chatpipe_binary, free_port, TestBroker, SETUP_COMMAND};
use serde_json::{json, Value};

/// The Helm chart's default image repository (`helm/chatpipe/values.yaml` `image.repository`);
/// the tag is the version (the chart's appVersion).
const REPOSITORY: &str = "chatpipe/chatpipe";
/// The local Debian base `scripts/setup` imports (see there).
const BASE_IMAGE: &str = "localhost/chatpipe-base/debian:bookworm-slim";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const UID: &str = "65532:65532";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap_or_else(|e| panic!("run podman {args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why podman cannot be used here, if it cannot.
fn unusable() -> Option<String> {
    match Command::new("podman").args(["run", "--rm", "--pull=never", BASE_IMAGE, "true"]).output() {
        Err(e) => Some(format!("podman cannot be started ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "podman cannot run the base image {BASE_IMAGE}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Containers removed on drop, whatever happened.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", name]).output();
        }
    }
}

/// The subcommands of `chatpipe --help` (the "Commands:" section), but `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// `podman run --rm` of the image as the chart runs it: non-root, read-only root, /tmp writable.
fn run_args<'a>(image: &'a str, extra: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--rm", "--pull=never", "--read-only", "--user", UID, "--tmpfs", "/tmp"];
    a.extend_from_slice(extra);
    a.push(image);
    a.extend_from_slice(args);
    a
}

/// Whether a `.dockerignore` pattern (the forms the file uses: a path, `**/name`, `*.ext`)
/// excludes the repository-relative path `rel`.
fn ignored(pattern: &str, rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    if let Some(name) = pattern.strip_prefix("**/") {
        parts.contains(&name)
    } else if let Some(ext) = pattern.strip_prefix('*') {
        parts.iter().any(|p| p.ends_with(ext))
    } else {
        rel == pattern || rel.starts_with(&format!("{pattern}/"))
    }
}

/// The files the compiling target needs are in its build context: every workspace member
/// and every file a crate includes at compile time (`include_str!`, `include_bytes!`).
/// The compiling target itself cannot be built here (no Rust image can be pulled).
#[test]
fn the_build_context_keeps_every_file_the_compile_reads() {
    let root = repo_root();
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore exists");
    let patterns: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(patterns.iter().all(|p| !p.starts_with('!')), "exceptions are not modelled by this check");
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest.split("members = [").nth(1).and_then(|m| m.split(']').next()).expect("workspace members");
    needed.extend(members.split(',').map(|m| m.trim().trim_matches('"').to_owned()).filter(|m| !m.is_empty()));
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() && !name.starts_with('.') && name != "target" {
                sources(&p, out);
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    sources(&root, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for rest in text.split(macro_name).skip(1) {
                let arg = rest.split('"').next().unwrap();
                let path = file.parent().unwrap().join(arg);
                let path = std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("{}: {arg}: {e}", file.display()));
                needed.push(path.strip_prefix(std::fs::canonicalize(&root).unwrap()).unwrap().display().to_string());
            }
        }
    }
    assert!(needed.len() > 8, "too few workspace members found: {needed:?}");
    for rel in &needed {
        for p in &patterns {
            assert!(!ignored(p, rel), ".dockerignore pattern {p:?} leaves {rel} out of the build context");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_builds_and_runs_every_role_and_a_pipeline() {
    if let Some(why) = unusable() {
        let msg = format!("image test skipped: {why}. Run `{SETUP_COMMAND}` (it installs podman, buildah, runc and mmdebstrap, configures /etc/containers/containers.conf and imports the base image)");
        assert!(std::env::var_os("CHATPIPE_REQUIRE_IMAGE_TEST").is_none(), "{msg}");
        eprintln!("{msg}");
        return;
    }
    let binary = chatpipe_binary().unwrap_or_else(|e| panic!("{e:#}"));

    // the host binary's version line: `chatpipe 0.1.0 (rev 1a2b3c4d5e6f)`
    let host = Command::new(&binary).arg("--version").output().unwrap();
    let version_line = String::from_utf8(host.stdout).unwrap().trim().to_owned();
    let revision = version_line
        .split("(rev ")
        .nth(1)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`chatpipe --version` has no revision: {version_line:?}"))
        .to_owned();
    assert!(version_line.starts_with(&format!("chatpipe {VERSION} ")), "{version_line}");

    // build context: only the binary, without its debug info (the Dockerfile's `prebuilt` target)
    let ctx = tempfile::tempdir().unwrap();
    let strip = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(ctx.path().join("chatpipe"))
        .arg(&binary)
        .status()
        .expect("run strip (binutils)");
    assert!(strip.success(), "strip failed");
    let tag = format!("{REPOSITORY}:{VERSION}");
    let source = "https://example.invalid/chatpipe.git";
    let dockerfile = repo_root().join("Dockerfile");
    let dockerfile = dockerfile.to_str().unwrap();
    let (b1, b2, b3, b4) = (
        format!("BASE_IMAGE={BASE_IMAGE}"),
        format!("VERSION={VERSION}"),
        format!("REVISION={revision}"),
        format!("SOURCE={source}"),
    );
    // the image this tag named before: removed once the tag moved (no dangling copy per run)
    let previous = podman(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    let previous = String::from_utf8_lossy(&previous.stdout).trim().to_owned();
    ok(&[
        "build",
        "--pull=never",
        "--target",
        "prebuilt",
        "--build-arg",
        &b1,
        "--build-arg",
        &b2,
        "--build-arg",
        &b3,
        "--build-arg",
        &b4,
        "-f",
        dockerfile,
        "-t",
        &tag,
        ctx.path().to_str().unwrap(),
    ]);

    let built = ok(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    if !previous.is_empty() && previous != built.trim() {
        let _ = podman(&["rmi", &previous]);
    }

    // what the image declares
    let inspect: Value = serde_json::from_str(&ok(&["image", "inspect", &tag])).unwrap();
    let config = &inspect[0]["Config"];
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], json!(VERSION), "{labels}");
    assert_eq!(labels["org.opencontainers.image.revision"], json!(revision), "{labels}");
    assert_eq!(labels["org.opencontainers.image.source"], json!(source), "{labels}");
    assert_eq!(labels["org.opencontainers.image.licenses"], json!("Apache-2.0"), "{labels}");
    assert_eq!(config["User"], json!(UID), "the chart's securityContext runs as 65532");
    assert_eq!(config["Entrypoint"], json!(["/usr/local/bin/chatpipe"]));

    // every shared library resolves (libssl3 for librdkafka)
    let ldd = ok(&run_args(&tag, &["--entrypoint", "ldd"], &["/usr/local/bin/chatpipe"]));
    assert!(!ldd.contains("not found"), "libraries missing in the image:\n{ldd}");
    assert!(ldd.contains("libssl.so.3"), "the binary should link the system OpenSSL 3:\n{ldd}");

    // --version and every role's --help, as the chart runs them
    let in_image = ok(&run_args(&tag, &[], &["--version"]));
    assert_eq!(in_image.trim(), version_line);
    let help = ok(&run_args(&tag, &[], &["--help"]));
    let roles = subcommands(&help);
    for role in
        ["ingest", "process", "sink", "serve", "hbase-emulator", "tables", "query", "dev", "load", "completions"]
    {
        assert!(roles.iter().any(|r| r == role), "`chatpipe --help` in the image lacks {role}: {roles:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&run_args(&tag, &[], &["completions", shell]));
        assert!(
            script.contains("hbase-emulator") && script.contains("kafka-brokers"),
            "{shell} completions:\n{script}"
        );
    }
    for role in &roles {
        let out = ok(&run_args(&tag, &[], &[role, "--help"]));
        assert!(out.contains("Usage: chatpipe"), "`chatpipe {role} --help`:\n{out}");
    }

    run_pipeline(&tag).await;
}

async fn run_pipeline(tag: &str) {
    let broker = TestBroker::start();
    let brokers = broker.bootstrap();
    let run_id = format!("chatpipe-image-test-{}", std::process::id());
    let name = |role: &str| format!("{run_id}-{role}");
    let (thrift, http, m_ingest, m_proc, m_sink) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let (serve_http, m_serve) = (free_port(), free_port());
    let thrift_addr = format!("127.0.0.1:{thrift}");
    let kafka_opts = ["--kafka-option", "session.timeout.ms=6000", "--kafka-option", "heartbeat.interval.ms=500"];

    let mut roles: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    roles.push((
        "hbase-emulator".into(),
        s(&["--mount", "type=tmpfs,destination=/var/lib/chatpipe/hbase,tmpfs-mode=1777"]),
        s(&["hbase-emulator", "--listen", &thrift_addr, "--data-dir", "/var/lib/chatpipe/hbase"]),
    ));
    let mut ingest = s(&[
        "ingest",
        "--kafka-brokers",
        &brokers,
        "--listen",
        &format!("127.0.0.1:{http}"),
        "--metrics-listen",
        &format!("127.0.0.1:{m_ingest}"),
        "--insecure-no-auth",
        "--events-partitions",
        "2",
    ]);
    ingest.extend(s(&kafka_opts));
    roles.push(("ingest".into(), vec![], ingest));
    let mut process = s(&[
        "process",
        "--kafka-brokers",
        &brokers,
        "--metrics-listen",
        &format!("127.0.0.1:{m_proc}"),
        "--state-dir",
        "/var/lib/chatpipe/processor",
        "--events-partitions",
        "2",
        "--output-partitions",
        "2",
        "--idle-timeout",
        "1s",
    ]);
    process.extend(s(&kafka_opts));
    roles.push((
        "process".into(),
        s(&["--mount", "type=tmpfs,destination=/var/lib/chatpipe/processor,tmpfs-mode=1777"]),
        process,
    ));
    let mut sink = s(&[
        "sink",
        "--kafka-brokers",
        &brokers,
        "--hbase-thrift",
        &thrift_addr,
        "--metrics-listen",
        &format!("127.0.0.1:{m_sink}"),
        "--create-tables",
        "--topic-partitions",
        "2",
    ]);
    sink.extend(s(&kafka_opts));
    roles.push(("sink".into(), vec![], sink));
    let mut serve = s(&[
        "serve",
        "--kafka-brokers",
        &brokers,
        "--hbase-thrift",
        &thrift_addr,
        "--listen",
        &format!("127.0.0.1:{serve_http}"),
        "--metrics-listen",
        &format!("127.0.0.1:{m_serve}"),
        "--insecure-no-auth",
    ]);
    serve.extend(s(&kafka_opts));
    roles.push(("serve".into(), vec![], serve));

    let containers = Containers(roles.iter().map(|(r, _, _)| name(r)).collect());
    for (role, extra, args) in &roles {
        let cname = name(role);
        let mut a: Vec<&str> = vec![
            "run",
            "-d",
            "--pull=never",
            "--name",
            &cname,
            "--network",
            "host",
            "--read-only",
            "--user",
            UID,
            "--tmpfs",
            "/tmp",
            "-e",
            "CHATPIPE_LOG=info",
        ];
        a.extend(extra.iter().map(String::as_str));
        a.push(tag);
        a.extend(args.iter().map(String::as_str));
        ok(&a);
    }
    let logs = || {
        let mut out = String::new();
        for c in &containers.0 {
            let l = podman(&["logs", "--tail", "40", c]);
            out += &format!("--- {c}:\n{}{}", String::from_utf8_lossy(&l.stdout), String::from_utf8_lossy(&l.stderr));
        }
        out + &format!("--- tansu:\n{}", broker.log())
    };

    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for port in [m_ingest, m_proc, m_sink, m_serve] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "/readyz on 127.0.0.1:{port} never answered 200\n{}", logs());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let body = format!("hello from the image {}", std::process::id());
    let event = json!({"type":"message","session_id":"4242","session_kind":"direct","sender_id":1,"recipient_id":2,
        "client_msg_id":"image-1","message":{"kind":"text","body":body}});
    let deadline = Instant::now() + Duration::from_secs(60);
    let message_id = loop {
        let r = client
            .post(format!("http://127.0.0.1:{http}/v1/events"))
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
            if status == 202 {
                break v["results"][0]["message_id"].as_str().expect("202 names the message id").to_owned();
            }
        }
        assert!(Instant::now() < deadline, "ingest never accepted the event\n{}", logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let query = run_args(
        tag,
        &["--network", "host"],
        &["query", "timeline", "--hbase-thrift", &thrift_addr, "--session", "4242", "--json"],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let row = loop {
        let out = podman(&query);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(v) =
            text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["body"] == json!(body))
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the event never reached HBase (last query: {text}{})\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row["message_id"], json!(message_id), "{row}");
    // and through serve's read API, from the image
    let url = format!("http://127.0.0.1:{serve_http}/v1/sessions/4242/messages?limit=10");
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = loop {
        let page: Value = match client.get(&url).send().await {
            Ok(r) => serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if let Some(m) = page["messages"].as_array().and_then(|ms| ms.iter().find(|m| m["body"] == json!(body))) {
            break m.clone();
        }
        assert!(Instant::now() < deadline, "serve never returned the message (last page: {page})\n{}", logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(served["message_id"], json!(message_id), "{served}");
    assert_eq!(row["sender_id"], json!("1"), "{row}");
    assert_eq!(row["session_id"], json!("4242"), "{row}");

    // SIGTERM: every role drains and exits 0
    for c in &containers.0 {
        ok(&["stop", "-t", "60", c]);
        let code = ok(&["inspect", "--format", "{{.State.ExitCode}}", c]);
        assert_eq!(code.trim(), "0", "{c} did not exit cleanly on SIGTERM\n{}", logs());
    }
    eprintln!("pipeline from the image: event {message_id} posted to ingest and read back from HBase");
}
