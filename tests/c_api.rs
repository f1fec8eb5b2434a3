//! Compiles every C program in c-tests/ against include/kvs.h and the static library
//! with the system C compiler (-Wall -Wextra -Wpedantic -Werror), and runs it, plainly and
//! (test_api.c) under valgrind memcheck; and installs the library into a prefix with
//! scripts/install-c and builds test_lib.c against that prefix alone, with pkg-config.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;

/// How every C test program is compiled: strict C11, every warning an error.
const CFLAGS: [&str; 6] = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-O1",
];

/// target/<profile>/deps/, beside this test binary: where `cargo test` builds libkvs.a
/// from the current sources (the copy in target/<profile>/ is refreshed only by
/// `cargo build`, so it can be stale).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

/// Compiles `source` into a fresh directory; returns the executable and the directory.
fn compile(source: &str) -> (PathBuf, TempDir) {
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
    let include = root.join("include");
    let src = root.join("c-tests").join(source);
    let args: [&std::ffi::OsStr; 9] = [
        "-g".as_ref(),
        "-I".as_ref(),
        include.as_ref(),
        src.as_ref(),
        lib.as_ref(),
        "-lpthread".as_ref(),
        "-ldl".as_ref(),
        "-lm".as_ref(),
        "-o".as_ref(),
    ];
    cc(&args, &exe, source);
    (exe, dir)
}

/// Runs the C compiler with CFLAGS, `args` and `exe` last (after `-o`); asserts it
/// succeeded (`what` names the build in the failure).
fn cc(args: &[&std::ffi::OsStr], exe: &Path, what: &str) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(CFLAGS)
        .args(args)
        .arg(exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cc} failed on {what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn c_api_test_passes() {
    let (exe, dir) = compile("test_api.c");
    let run = Command::new(&exe)
        .arg(dir.path().join("stores"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "test_api.c failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    // Without RUST_LOG the library writes nothing to the program's stderr.
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");
}

/// The same program under valgrind memcheck: no invalid read or write, no use of
/// uninitialised memory, nothing definitely leaked (kvs_get_alloc/kvs_free, handles).
/// .ci/run installs valgrind; on a machine without it this test fails and says why.
#[test]
fn c_api_test_is_clean_under_valgrind() {
    let (exe, dir) = compile("test_api.c");
    let out = Command::new("valgrind")
        .args([
            "--error-exitcode=9",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&exe)
        .arg(dir.path().join("stores"))
        .output()
        .expect("valgrind is needed for this test (apt-get install valgrind)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind found errors:\n{stderr}");
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 0 failed"));
}

/// Runs `exe` on a fresh store directory; asserts it passed and printed nothing on stderr.
fn run_passes(exe: &Path, dir: &TempDir, env: &[(&str, &Path)]) {
    let run = Command::new(exe)
        .arg(dir.path().join("stores"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{}:\n{stdout}\n{stderr}",
        exe.display()
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");
}

#[test]
fn c_library_test_passes() {
    let (exe, dir) = compile("test_lib.c");
    run_passes(&exe, &dir, &[]);
}

/// scripts/install-c into a fresh prefix (from the libraries this `cargo test` built),
/// then test_lib.c compiled with nothing but `pkg-config --cflags --libs kvs` against
/// that prefix, linked to the shared library by its soname, and run.
#[test]
fn the_installed_library_builds_with_pkg_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = TempDir::new("install");
    let prefix = dir.path().join("prefix");
    let out = Command::new("bash")
        .arg(root.join("scripts/install-c"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--from")
        .arg(lib_dir())
        .output()
        .expect("run scripts/install-c");
    assert!(
        out.status.success(),
        "install-c failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    for f in [
        format!("lib/libkvs.so.{version}"),
        format!("lib/libkvs.so.{major}"),
        "lib/libkvs.so".into(),
        "lib/libkvs.a".into(),
        "include/kvs.h".into(),
        "lib/pkgconfig/kvs.pc".into(),
    ] {
        assert!(prefix.join(&f).exists(), "{f} not installed");
    }
    let pc_path = prefix.join("lib/pkgconfig");
    let pkg = |arg: &str| {
        let o = Command::new("pkg-config")
            .arg(arg)
            .arg("kvs")
            .env("PKG_CONFIG_PATH", &pc_path)
            .output()
            .expect("pkg-config is needed for this test (apt-get install pkg-config)");
        assert!(o.status.success(), "pkg-config {arg} kvs failed");
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(pkg("--modversion").trim(), version);
    let flags = format!("{} {}", pkg("--cflags"), pkg("--libs"));
    assert!(!flags.contains(root.to_str().unwrap()), "{flags}");
    let exe = dir.path().join("prog");
    let src = root.join("c-tests/test_lib.c");
    let mut args: Vec<&std::ffi::OsStr> = vec![src.as_ref()];
    args.extend(flags.split_whitespace().map(std::ffi::OsStr::new));
    args.extend(["-lpthread", "-o"].map(std::ffi::OsStr::new));
    cc(&args, &exe, "test_lib.c against the installed prefix");
    // Linked to the shared library by its soname.
    let elf = Command::new("readelf").arg("-d").arg(&exe).output();
    if let Ok(elf) = elf {
        let text = String::from_utf8_lossy(&elf.stdout);
        assert!(
            text.contains(&format!("Shared library: [libkvs.so.{major}]")),
            "{text}"
        );
    }
    run_passes(&exe, &dir, &[("LD_LIBRARY_PATH", &prefix.join("lib"))]);
}
