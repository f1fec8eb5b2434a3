//! Compiles every C program in c-tests/ against include/kvs.h and the static library
//! with the system C compiler (-Wall -Wextra -Wpedantic -Werror), and runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;

/// target/<profile>/deps/, beside this test binary: where `cargo test` builds libkvs.a
/// from the current sources (the copy in target/<profile>/ is refreshed only by
/// `cargo build`, so it can be stale).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

fn compile_and_run(source: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir().join("libkvs.a");
    assert!(
        lib.exists(),
        "{} missing: cargo builds it with the lib target",
        lib.display()
    );
    let dir = TempDir::new("capi");
    std::fs::create_dir_all(dir.path()).unwrap();
    let exe = dir.path().join("prog");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
            "-O1",
        ])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("c-tests").join(source))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cc} failed on {source}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store_dir = dir.path().join("stores");
    let run = Command::new(&exe)
        .arg(&store_dir)
        .output()
        .expect("run the C test");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{source} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    println!("{source}: {stdout}");
}

#[test]
fn c_api_test_passes() {
    compile_and_run("test_api.c");
}
