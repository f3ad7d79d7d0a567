//! Generates code from `proto/`: the application API (connectrpc: message
//! types, service stubs, and the descriptor set that server reflection
//! publishes) and the mesh protocol (tonic).
fn main() {
    connectrpc_build::Config::new()
        .files(&["proto/peat/sidecar/v1/sidecar.proto"])
        .includes(&["proto/"])
        .include_file("_connectrpc.rs")
        .emit_descriptor_set("peat_sidecar_descriptor.bin")
        .compile()
        .expect("compiling proto/peat/sidecar/v1/sidecar.proto (is protoc installed?)");
    tonic_prost_build::configure()
        .compile_protos(&["proto/peat/mesh/v1/mesh.proto"], &["proto/"])
        .expect("compiling proto/peat/mesh/v1/mesh.proto (is protoc installed?)");
}
