fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate, so nothing needs installing by hand.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; cargo reads no env var concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/fedretail.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/fedretail.proto");
    Ok(())
}
