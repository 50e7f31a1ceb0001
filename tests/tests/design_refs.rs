#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The contract is in the repository: every `DESIGN §n` reference in the code, the docs, the
//! chart and the scripts names a section heading of `docs/DESIGN.md`, and nothing points at a
//! design document outside the repository.
//!
//! The scanner reads every `.rs`, `.md`, `.yaml`, `.yml`, `.tpl`, `.py`, `.toml`, `.txt` and
//! `.json` file of the repository (not `target/` or hidden directories). It understands
//! `DESIGN §3`, `DESIGN.md §3`, `DESIGN §6.2` and lists such as `DESIGN §§3, 6` or
//! `DESIGN §3 and §6`. Inside `docs/DESIGN.md`, a bare `§n` is a reference too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 9] = ["rs", "md", "yaml", "yml", "tpl", "py", "toml", "txt", "json"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// The section numbers of a Markdown document: `## 3. Data flow` → `3`, `### 6.2 Inbox` → `6.2`.
fn sections(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|h| {
            let num: String = h.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let num = num.trim_end_matches('.');
            (!num.is_empty()).then(|| num.to_owned())
        })
        .collect()
}

/// A section number at the start of `s` (`3`, `6.2`), without a trailing dot.
fn number_at(s: &str) -> Option<String> {
    let num: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let num = num.trim_end_matches('.').to_owned();
    num.chars().next().is_some_and(|c| c.is_ascii_digit()).then_some(num)
}

/// The section numbers a text cites after `prefix` (`DESIGN`, or empty for bare `§n`).
fn references(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    // a bare reference is found by its `§`, a prefixed one by its prefix
    let needle = if prefix.is_empty() { "§" } else { prefix };
    let mut rest = text;
    while let Some(i) = rest.find(needle) {
        let mut s = &rest[i + prefix.len()..];
        rest = &rest[i + needle.len()..];
        if !prefix.is_empty() {
            s = s.strip_prefix(".md").unwrap_or(s);
            s = s.trim_start_matches([' ', '`', '\u{a0}']);
            if !s.starts_with('§') {
                continue;
            }
        }
        // `§3`, `§§3, 6`, `§3 and §6`, `§3, §6`
        loop {
            s = s.trim_start_matches('§').trim_start();
            let Some(n) = number_at(s) else { break };
            s = &s[n.len()..];
            out.push(n);
            let next = s.trim_start_matches([',', ' ']).trim_start_matches("and ").trim_start_matches("or ");
            let continues = next.starts_with('§') || (s.starts_with(',') && number_at(next).is_some());
            if !continues {
                break;
            }
            s = next;
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" && name != "__pycache__" {
                files(&path, out);
            }
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) {
            out.push(path);
        }
    }
}

#[test]
fn every_design_reference_names_a_section_of_docs_design_md() {
    let root = repo_root();
    let design_path = root.join("docs/DESIGN.md");
    let design = std::fs::read_to_string(&design_path).expect("docs/DESIGN.md exists");
    let have = sections(&design);
    for n in 1..=8 {
        assert!(have.contains(&n.to_string()), "docs/DESIGN.md lost section {n} (have {have:?})");
    }

    let mut all = Vec::new();
    files(&root, &mut all);
    let (mut cited, mut broken) = (0, Vec::new());
    for path in &all {
        // this file's own examples are made-up references
        if path.ends_with("tests/tests/design_refs.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        let mut refs = references(&text, "DESIGN");
        if *path == design_path {
            refs.extend(references(&text, ""));
        }
        for n in refs {
            cited += 1;
            if !have.contains(&n) {
                broken.push(format!("{rel}: DESIGN §{n}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "references to sections docs/DESIGN.md does not have (it has {have:?}):\n{}",
        broken.join("\n")
    );
    // the code cites the contract dozens of times: finding few means the scanner is broken
    assert!(cited >= 30, "only {cited} DESIGN § references found in {} files", all.len());
    eprintln!("{cited} DESIGN § references in {} files resolve to docs/DESIGN.md", all.len());
}

#[test]
fn no_document_points_at_a_design_outside_the_repository() {
    let root = repo_root();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut outside = Vec::new();
    for path in &all {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        if path.ends_with("tests/tests/design_refs.rs") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let l = line.to_lowercase();
            if l.contains("shared/design.md") || (l.contains("design.md") && l.contains("(shared)")) {
                outside.push(format!("{}:{}: {}", path.strip_prefix(&root).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    assert!(outside.is_empty(), "point these at docs/DESIGN.md:\n{}", outside.join("\n"));
}

#[test]
fn the_scanner_reads_every_form_of_reference() {
    assert_eq!(references("see DESIGN §3.", "DESIGN"), ["3"]);
    assert_eq!(references("(DESIGN.md §6.2)", "DESIGN"), ["6.2"]);
    assert_eq!(references("DESIGN §§3, 6 and DESIGN §4 and §5", "DESIGN"), ["3", "6", "4", "5"]);
    assert_eq!(references("DESIGN §7, the guarantees", "DESIGN"), ["7"]);
    assert_eq!(references("DESIGN says; the DESIGNER §9", "DESIGN"), Vec::<String>::new());
    assert_eq!(references("kept apart, see §6", ""), ["6"]);
    let have = sections("# t\n## 1. Layout\n### 6.2 Inbox\n## Notes\n");
    assert_eq!(have, BTreeSet::from(["1".to_owned(), "6.2".to_owned()]));
    assert!(!have.contains(&references("DESIGN §9", "DESIGN")[0]), "a missing section is reported");
}
