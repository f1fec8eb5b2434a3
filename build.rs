//! Generates the C header from src/capi/ with cbindgen into OUT_DIR, and into
//! include/kvs.h only when asked (`KVS_WRITE_HEADER=1 cargo build`), so that building kvs
//! as a dependency never writes into its source tree. CI regenerates it that way and fails
//! if the committed include/kvs.h differs.
//!
//! Also gives the shared library its soname, `libkvs.so.<major version>`.

use std::path::Path;

/// The C ABI's files; cbindgen reads the first and follows its `mod` lines to the others.
const CAPI: [&str; 4] = [
    "src/capi/mod.rs",
    "src/capi/status.rs",
    "src/capi/options.rs",
    "src/capi/logging.rs",
];

fn main() {
    for f in CAPI {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=KVS_WRITE_HEADER");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    let bindings = generate(config.clone(), &dir);
    bindings.write_to_file(Path::new(&out).join("kvs.h"));
    if std::env::var_os("KVS_WRITE_HEADER").is_some_and(|v| v != "0") {
        // Writes only when the content changed, so an unchanged header keeps its mtime.
        bindings.write_to_file(format!("{dir}/include/kvs.h"));
    }
    // The same declarations as plain C that cffi's parser takes (no preprocessor lines,
    // no comments), where maturin looks for them when it builds the Python package
    // (`target/header.h`): python/ goes through this very C ABI.
    let mut plain = config;
    plain.include_guard = None;
    plain.pragma_once = false;
    plain.no_includes = true;
    plain.sys_includes.clear();
    plain.cpp_compat = false;
    plain.documentation = false;
    plain.header = None;
    plain.autogen_warning = None;
    let target = Path::new(&out)
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out")
        .to_path_buf();
    generate(plain, &dir).write_to_file(target.join("header.h"));

    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets it");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkvs.so.{major}");
    }
}

fn generate(config: cbindgen::Config, dir: &str) -> cbindgen::Bindings {
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{dir}/{}", CAPI[0]))
        .generate()
        .expect("cbindgen could not parse src/capi/")
}
