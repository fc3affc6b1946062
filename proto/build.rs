// Compiles the .proto files with protox (pure Rust), so no protoc binary is needed to build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/kv.proto", "proto/node.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
