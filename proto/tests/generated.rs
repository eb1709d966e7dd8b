//! The committed generated code must be what prost-build makes of the .proto today.
//!
//! Refresh it with `HERALD_BLESS=1 cargo test -p herald-proto`.

use std::path::Path;

#[test]
fn generated_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let descriptors = protox::compile([root.join("herald/v1/envelope.proto")], [root])
        .expect("the .proto compiles");
    let out = tempfile_dir();
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(descriptors)
        .expect("prost-build generates code");
    let fresh = std::fs::read_to_string(out.join("herald.v1.rs")).expect("generated file");
    let committed_path = root.join("src/herald.v1.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if std::env::var_os("HERALD_BLESS").is_some() {
        std::fs::write(&committed_path, &fresh).expect("writing the generated code");
        return;
    }
    assert!(
        fresh == committed,
        "proto/src/herald.v1.rs is stale: run `HERALD_BLESS=1 cargo test -p herald-proto` and commit it"
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
