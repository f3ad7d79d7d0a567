//! Generates code from `proto/`: the application API (connectrpc: message
//! types, service stubs, and the descriptor set that server reflection
//! publishes), the health interface's descriptor (reflection only; the
//! service itself comes from connectrpc-health) and the mesh protocol (tonic).
use std::path::PathBuf;
use std::process::Command;

const HEALTH_PROTO: &str = "proto/grpc/health/v1/health.proto";
const MESH_PROTO: &str = "proto/peat/mesh/v1/mesh.proto";

fn main() {
    connectrpc_build::Config::new()
        .files(&["proto/peat/sidecar/v1/sidecar.proto"])
        .includes(&["proto/"])
        .include_file("_connectrpc.rs")
        .emit_descriptor_set("peat_sidecar_descriptor.bin")
        .compile()
        .expect("compiling proto/peat/sidecar/v1/sidecar.proto (is protoc installed?)");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("health_descriptor.bin");
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    let status = Command::new(protoc)
        .arg("--proto_path=proto")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(HEALTH_PROTO)
        .status()
        .expect("running protoc for the health descriptor (is protoc installed?)");
    assert!(status.success(), "protoc failed on {HEALTH_PROTO}");
    println!("cargo:rerun-if-changed={HEALTH_PROTO}");
    // Once a build script prints any rerun-if-changed line, cargo watches
    // only the files named, so the mesh protocol is named explicitly.
    println!("cargo:rerun-if-changed={MESH_PROTO}");
    tonic_prost_build::configure()
        .compile_protos(&[MESH_PROTO], &["proto/"])
        .expect("compiling proto/peat/mesh/v1/mesh.proto (is protoc installed?)");
}
