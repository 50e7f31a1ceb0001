//! Stamps the git revision into `chatpipe --version` (`CHATPIPE_GIT_REVISION`).
//!
//! The revision comes from the `CHATPIPE_GIT_REVISION` environment variable when it is set
//! (the Dockerfile passes its `REVISION` build argument, because the image's build context
//! has no `.git`), else from `git rev-parse --short=12 HEAD`, else `unknown`. Cargo re-runs
//! this script when HEAD or the branch it points at moves, so a new commit relinks only
//! the binary crate.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=CHATPIPE_GIT_REVISION");
    let from_env = std::env::var("CHATPIPE_GIT_REVISION").ok().filter(|s| !s.trim().is_empty());
    let revision = from_env.or_else(|| git(&["rev-parse", "--short=12", "HEAD"])).unwrap_or_else(|| "unknown".into());
    // HEAD (a worktree has its own), the branch it names, and packed-refs (where a ref
    // lives after `git gc`)
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        let path = PathBuf::from(path);
        let path = if path.is_absolute() {
            path
        } else {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(path)
        };
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rustc-env=CHATPIPE_GIT_REVISION={revision}");
}
