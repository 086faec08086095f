//! Compiles `kms/v1`, `iam/v1`, `table/v1` with protox (pure Rust: no `protoc` needed) and
//! generates tonic clients and servers plus a descriptor set for reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "kms/v1/kms.proto",
    "iam/v1/iam.proto",
    "table/v1/table.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("lockbox_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Prost with smaller message buffers (src/codec.rs).
        .codec_path("crate::codec::LockboxCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
