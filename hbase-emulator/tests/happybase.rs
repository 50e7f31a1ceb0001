//! A standard third-party client, Python happybase, against the emulator: the checks are in
//! `happybase_client.py`. Needs the virtualenv made by `scripts/setup`; without it this test
//! fails (it never skips).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CHATPIPE_PYTHON") {
        return PathBuf::from(p);
    }
    let tools = std::env::var("CHATPIPE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/chatpipe"));
    tools.join("venv/bin/python")
}

/// happybase's names of the transport and protocol of a combination.
fn happybase_wire(framed: bool, compact: bool) -> [&'static str; 2] {
    [if framed { "framed" } else { "buffered" }, if compact { "compact" } else { "binary" }]
}

#[test]
fn happybase_sees_hbase_behaviour_in_every_transport_and_protocol() {
    let python = python();
    let has_happybase =
        Command::new(&python).args(["-c", "import happybase"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(
        has_happybase,
        "no Python with happybase at {} (set CHATPIPE_PYTHON, or run `bash scripts/setup` \
         at the repository root to create the virtualenv)",
        python.display()
    );

    for (framed, compact) in common::WIRES {
        let emu = common::emulator_with(framed, compact);
        let addr = emu.local_addr();
        let wire = happybase_wire(framed, compact);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/happybase_client.py");
        let out = Command::new(&python)
            .arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .args(wire)
            .output()
            .expect("run the happybase script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "happybase script failed over {wire:?} ({}):\n{stdout}\n{stderr}", out.status);
        assert!(stdout.contains("happybase: all checks passed"), "{wire:?}: {stdout}\n{stderr}");
    }
}
