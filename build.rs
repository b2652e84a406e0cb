//! Compiles the project's own gRPC API (`proto/`). Envoy's types come from the envoy-types crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a machine with only a Rust toolchain (or a plain Docker build stage)
    // can build the crate; a PROTOC set by the user wins.
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/daytona_authz/admin/v1/admin.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
