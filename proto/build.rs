fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/phoenix/v1/phoenix.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    // Stubs follow the crate's `client` / `server` features. No `connect` helper on the
    // clients: both sides dial through pki's transport (TLS with rotating identities).
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_transport(false)
        // Small first buffers per call: a session holds its encode and decode buffer for
        // its whole life (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
