# The .deb or .rpm: `nfpm package` over packaging/nfpm.yaml, fed through the
# environment variables that file documents as its inputs (the same ones
# `cargo xtask dist` sets). Nothing from packaging/ is restated here.
{ pkgs
, root
, peat-sidecar
, packager
, sourceDateEpoch
, release ? "1"
}:
let
  inherit (pkgs) lib;

  # nfpm resolves the recipe's relative paths against the working directory,
  # which must look like the repository root.
  packagingSrc = lib.fileset.toSource {
    inherit root;
    fileset = root + "/packaging";
  };
in
pkgs.runCommand "peat-sidecar-${peat-sidecar.version}-${release}-${packager}"
{
  nativeBuildInputs = [
    pkgs.nfpm
    pkgs.gzip
  ];
  PEAT_PKG_VERSION = peat-sidecar.version;
  PEAT_PKG_RELEASE = release;
  PEAT_PKG_BIN = lib.getExe peat-sidecar;
  # nfpm's architecture names (Go's); read by a recipe that says `arch: ''${PEAT_PKG_ARCH}`.
  PEAT_PKG_ARCH = if pkgs.stdenv.hostPlatform.isx86_64 then "amd64" else "arm64";
  SOURCE_DATE_EPOCH = toString sourceDateEpoch;
  passthru = { inherit packager release; };
}
  ''
    # The man page and completions come from the binary itself.
    export PEAT_PKG_GENERATED=$PWD/generated
    mkdir -p "$PEAT_PKG_GENERATED"
    "$PEAT_PKG_BIN" generate man "$PEAT_PKG_GENERATED"
    "$PEAT_PKG_BIN" generate completions "$PEAT_PKG_GENERATED"
    gzip -9 --no-name "$PEAT_PKG_GENERATED/peat-sidecar.1"

    mkdir -p "$out"
    cd ${packagingSrc} || exit 1
    nfpm package --config packaging/nfpm.yaml --packager ${packager} --target "$out/"
  ''
