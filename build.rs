//! Generates include/kvs.h from src/capi.rs with cbindgen. The committed header must
//! equal what this writes; CI fails on a difference.

fn main() {
    println!("cargo:rerun-if-changed=src/capi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{dir}/src/capi.rs"))
        .generate()
        .expect("cbindgen could not parse src/capi.rs");
    // Writes only when the content changed, so an unchanged header keeps its mtime.
    bindings.write_to_file(format!("{dir}/include/kvs.h"));
}
