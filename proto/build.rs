//! Compiles the `.proto` contract with `protox` (pure Rust), so a fresh machine needs no system `protoc`,
//! and writes the encoded descriptor set for gRPC server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["cni_metrics/v1/ingest.proto", "cni_metrics/v1/consumer.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("cni_metrics_descriptor.bin"), fds.encode_to_vec())?;
    // Every service uses the small-buffer codec (src/codec.rs): one stream per node adds up.
    tonic_prost_build::configure().build_client(true).build_server(true).codec_path("crate::codec::SmallBufferCodec").compile_fds(fds)?;
    Ok(())
}
