# The container image: only the static binary at /usr/bin/peat-sidecar and
# the data volume's mount point owned by the runtime user, with the same
# entrypoint, numeric user, environment, ports, volume, stop signal and
# labels as the image `cargo xtask dist` writes. Package metadata comes from
# Cargo.toml, as there.
{ pkgs
, peat-sidecar
, cargoToml
, revision
, sourceDateEpoch
}:
let
  inherit (pkgs) lib;
  inherit (peat-sidecar) version;
  package = cargoToml.package;

  commitTime = import ./iso-date.nix sourceDateEpoch;
  uid = "65532";
  dataDir = "/var/lib/peat-sidecar";
  apiPort = "50051";
  meshPort = "7420";
in
pkgs.dockerTools.buildLayeredImage {
  name = "peat-sidecar";
  tag = version;
  # The commit time, never the build time: the image must be reproducible.
  created = commitTime;
  mtime = commitTime;

  extraCommands = ''
    mkdir -p usr/bin .${dataDir}
    cp ${lib.getExe peat-sidecar} usr/bin/peat-sidecar
    chmod 0755 usr/bin/peat-sidecar
  '';
  fakeRootCommands = ''
    chown ${uid}:${uid} .${dataDir}
    chmod 0750 .${dataDir}
  '';

  config = {
    Entrypoint = [ "/usr/bin/peat-sidecar" ];
    Cmd = [ "serve" ];
    User = "${uid}:${uid}";
    WorkingDir = dataDir;
    StopSignal = "SIGTERM";
    # Container defaults: reachable through published ports, data on the volume.
    Env = [
      "PATH=/usr/bin"
      "PEAT_SIDECAR_LISTEN=tcp://0.0.0.0:${apiPort}"
      "PEAT_SIDECAR_DATA_DIR=${dataDir}"
    ];
    ExposedPorts = {
      "${apiPort}/tcp" = { };
      "${meshPort}/tcp" = { };
    };
    Volumes = {
      ${dataDir} = { };
    };
    Labels = {
      "org.opencontainers.image.title" = "peat-sidecar";
      "org.opencontainers.image.description" = package.description;
      "org.opencontainers.image.version" = version;
      "org.opencontainers.image.revision" = revision;
      "org.opencontainers.image.created" = commitTime;
      "org.opencontainers.image.source" = package.repository;
      "org.opencontainers.image.url" = package.repository;
      "org.opencontainers.image.licenses" = package.license;
      "org.opencontainers.image.vendor" = "peat-sidecar";
    };
  };
}
