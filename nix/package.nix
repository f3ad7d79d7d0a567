# The static musl binary, built with crane, and the cargo checks that share
# its dependency build (clippy, rustfmt, nextest, cargo-audit).
#
# `salt` only exists for the reproducibility check: a non-empty salt makes a
# second, independent derivation of the same build, whose output must be
# bit-identical to the first.
{ pkgs
, crane
, advisory-db
, root
, salt ? ""
}:
let
  inherit (pkgs) lib;

  # x86_64-unknown-linux-musl / aarch64-unknown-linux-musl for this system.
  staticPkgs = pkgs.pkgsStatic;
  muslTarget = staticPkgs.stdenv.hostPlatform.rust.rustcTarget;
  targetEnvName = lib.toUpper (builtins.replaceStrings [ "-" ] [ "_" ] muslTarget);
  # The musl C toolchain for the C parts of dependencies (ring, mimalloc):
  # compiling them against glibc headers would break the static binary.
  muslCc = staticPkgs.stdenv.cc;
  muslCcBin = "${muslCc}/bin/${muslCc.targetPrefix}cc";

  # The toolchain the repository declares (rust-version 1.90, edition 2024),
  # pinned to one release so builds do not move with the overlay.
  toolchain = pkgs.rust-bin.stable."1.95.0".default.override {
    targets = [ muslTarget ];
  };
  craneLib = (crane.mkLib pkgs).overrideToolchain (_: toolchain);

  # Cargo sources plus the .proto files build.rs compiles; nothing else, so
  # edits to docs or packaging do not rebuild the binary.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (lib.fileset.fileFilter (file: file.hasExt "proto") (root + "/proto"))
    ];
  };

  crateInfo = craneLib.crateNameFromCargoToml { cargoToml = root + "/Cargo.toml"; };

  # The environment the Nix-free `cargo xtask dist` build uses, in Nix terms.
  buildEnv = {
    CARGO_BUILD_TARGET = muslTarget;
    CARGO_BUILD_RUSTFLAGS = "-C target-feature=+crt-static";
    "CC_${builtins.replaceStrings [ "-" ] [ "_" ] muslTarget}" = muslCcBin;
    "CARGO_TARGET_${targetEnvName}_LINKER" = muslCcBin;
    PROTOC = "${pkgs.protobuf}/bin/protoc";
  };

  commonArgs = buildEnv // {
    inherit src;
    inherit (crateInfo) pname version;
    strictDeps = true;
    # The musl compiler is reached through CC_<target> and the linker
    # variable only: as a nativeBuildInput its setup hook would export CC and
    # turn every native C compilation (build scripts) into a musl one.
    nativeBuildInputs = [ pkgs.protobuf ];
    # The binary package only; xtask is build tooling.
    cargoExtraArgs = "--locked --package peat-sidecar";
  }
    // lib.optionalAttrs (salt != "") { REPRODUCIBILITY_SALT = salt; };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  peat-sidecar = craneLib.buildPackage (
    commonArgs
    // {
      inherit cargoArtifacts;
      # Tests run once, in the nextest check, not again in every package build.
      doCheck = false;
      meta = {
        description = "CRDT mesh-sync sidecar: JSON documents as Automerge CRDTs over Connect RPC";
        homepage = "https://github.com/peat-sidecar/peat-sidecar";
        license = lib.licenses.asl20;
        mainProgram = "peat-sidecar";
        platforms = [
          "x86_64-linux"
          "aarch64-linux"
        ];
      };
    }
  );
in
{
  inherit peat-sidecar toolchain buildEnv;

  checks = {
    clippy = craneLib.cargoClippy (
      commonArgs
      // {
        inherit cargoArtifacts;
        cargoExtraArgs = "--locked --workspace";
        cargoClippyExtraArgs = "--all-targets -- --deny warnings";
      }
    );

    fmt = craneLib.cargoFmt { inherit (commonArgs) src pname version; };

    nextest = craneLib.cargoNextest (
      commonArgs
      // {
        inherit cargoArtifacts;
        cargoNextestExtraArgs = "--no-tests=fail";
      }
    );

    audit = craneLib.cargoAudit {
      inherit (commonArgs) src pname version;
      inherit advisory-db;
    };
  };
}
