//! Records the compiler version, the build settings and, when available, the git commit (with
//! `-dirty` when the sources differ from it) for run metadata.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ATTNBENCH_RUSTC_VERSION={version}");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let dirty = !commit.is_empty()
        && Command::new("git")
            // Committed results and reports are outputs, not code: they do not make a
            // build dirty.
            .args([
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)results",
                ":(exclude)reports",
            ])
            .output()
            .ok()
            .is_some_and(|o| !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=ATTNBENCH_GIT_COMMIT={commit}");
    // The build settings a result depends on: profile, optimisation level, RUSTFLAGS (e.g.
    // `-C target-cpu=native`) and the target features compiled in.
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    println!("cargo:rustc-env=ATTNBENCH_PROFILE={}", env("PROFILE"));
    println!("cargo:rustc-env=ATTNBENCH_OPT_LEVEL={}", env("OPT_LEVEL"));
    println!(
        "cargo:rustc-env=ATTNBENCH_RUSTFLAGS={}",
        env("CARGO_ENCODED_RUSTFLAGS").replace('\x1f', " ")
    );
    println!(
        "cargo:rustc-env=ATTNBENCH_TARGET_FEATURES={}",
        env("CARGO_CFG_TARGET_FEATURE")
    );
    println!("cargo:rerun-if-changed=build.rs");
    // The sources: an edit makes the build dirty even when git's files do not change (cargo
    // scans a directory's files for changes).
    for path in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
    // Only watch git files that exist: a missing path would rerun this script every build.
    for path in [".git/HEAD", ".git/index", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
