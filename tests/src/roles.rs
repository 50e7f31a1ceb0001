//! Roles as separate OS processes of the workspace's `chatpipe` binary, for tests that kill
//! them with SIGKILL or freeze them with SIGSTOP the way an operator's fault would.
//!
//! A [`RoleProcess`] appends the role's output to a log file (kept in the test's temporary
//! directory, printed by [`RoleProcess::log`] when a test fails) and is killed when
//! dropped, so a failing test leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::chat::OracleRules;
use crate::chatpipe_binary;

/// Group settings that let a killed member's partitions move within seconds.
pub const FAST_GROUP: &[(&str, &str)] = &[("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];

/// One role's process.
pub struct RoleProcess {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl RoleProcess {
    /// Starts `chatpipe <args…>`, its output appended to `log`.
    pub fn start(args: Vec<String>, log: &Path) -> Self {
        let mut p = RoleProcess { args, log: log.to_owned(), child: None };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("role log");
        let child = Command::new(chatpipe_binary().expect("chatpipe binary"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("role log"))
            .stderr(log)
            .spawn()
            .expect("start a chatpipe role");
        self.child = Some(child);
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then the same command again at once.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends a signal (`SIGSTOP`, `SIGCONT`, …) by name.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let ok =
                Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().is_ok_and(|s| s.success());
            assert!(ok, "kill -{name} {pid} failed");
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The output so far (every incarnation).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `chatpipe process` flags for a test broker, group and the oracle's rules (idle timeout
/// 1 s and grace 5 s, as the in-process tests configure), with checkpoints in `state_dir`.
pub fn processor_args(
    brokers: &str,
    group: &str,
    partitions: i32,
    output_partitions: i32,
    rules: &OracleRules,
    state_dir: &Path,
) -> Vec<String> {
    let allowed: Vec<&str> = chatpipe_common::event::MessageKind::ALL
        .iter()
        .filter(|k| **k != rules.disallowed_kind)
        .map(|k| k.as_str())
        .collect();
    let mut a: Vec<String> = [
        "process",
        "--kafka-brokers",
        brokers,
        "--group-id",
        group,
        "--events-partitions",
        &partitions.to_string(),
        "--output-partitions",
        &output_partitions.to_string(),
        "--blocked-senders",
        &rules.blocked_sender.to_string(),
        "--allowed-kinds",
        &allowed.join(","),
        "--max-body-bytes",
        &rules.max_body_bytes.to_string(),
        "--compress-min-bytes",
        &rules.compress_min_bytes.to_string(),
        "--fanout-max-members",
        &rules.fanout_max_members.to_string(),
        "--window",
        &format!("{}ms", rules.window_ms),
        "--grace",
        "5s",
        "--correction-horizon",
        &format!("{}ms", rules.correction_horizon_ms),
        "--idle-timeout",
        "1s",
        "--drain-timeout",
        "5s",
        "--metrics-listen",
        "127.0.0.1:0",
        "--log-format",
        "text",
        "--state-dir",
        &state_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    push_kafka_options(&mut a, FAST_GROUP);
    a
}

/// `chatpipe sink` flags for a test broker and emulator.
pub fn sink_args(brokers: &str, thrift: &str, group: &str, partitions: i32) -> Vec<String> {
    let mut a: Vec<String> = [
        "sink",
        "--kafka-brokers",
        brokers,
        "--hbase-thrift",
        thrift,
        "--group-id",
        group,
        "--topic-partitions",
        &partitions.to_string(),
        "--drain-timeout",
        "5s",
        "--metrics-listen",
        "127.0.0.1:0",
        "--log-format",
        "text",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    push_kafka_options(&mut a, FAST_GROUP);
    a
}

fn push_kafka_options(a: &mut Vec<String>, options: &[(&str, &str)]) {
    for (k, v) in options {
        a.push("--kafka-option".into());
        a.push(format!("{k}={v}"));
    }
}
