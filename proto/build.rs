fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/phoenix/v1/phoenix.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
