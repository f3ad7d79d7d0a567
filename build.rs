//! Generates the API's message types and service stubs from `proto/`, and the
//! descriptor set that server reflection publishes.
fn main() {
    connectrpc_build::Config::new()
        .files(&["proto/peat/sidecar/v1/sidecar.proto"])
        .includes(&["proto/"])
        .include_file("_connectrpc.rs")
        .emit_descriptor_set("peat_sidecar_descriptor.bin")
        .compile()
        .expect("compiling proto/peat/sidecar/v1/sidecar.proto (is protoc installed?)");
}
