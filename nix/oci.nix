# The container image: only the static binary (and CA certificates for TLS
# to the agent), with the entrypoint, numeric user, ports, volume and labels
# of the image `cargo xtask dist` writes, so both images behave the same.
{ pkgs
, peat-sidecar
, sourceDateEpoch
}:
let
  inherit (pkgs) lib;
  inherit (peat-sidecar) version;

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

  contents = [ pkgs.dockerTools.caCertificates ];

  # The binary at the same path as in the packages and the Nix-free image,
  # and a data directory the unprivileged user owns.
  extraCommands = ''
    mkdir -p usr/bin .${dataDir}
    cp ${lib.getExe peat-sidecar} usr/bin/peat-sidecar
  '';
  fakeRootCommands = ''
    chown ${uid}:${uid} .${dataDir}
    chmod 0750 .${dataDir}
  '';
  enableFakechroot = false;

  config = {
    Entrypoint = [ "/usr/bin/peat-sidecar" ];
    Cmd = [ "serve" ];
    User = "${uid}:${uid}";
    WorkingDir = dataDir;
    Env = [
      # Inside a container the API must be reachable through published ports.
      "PEAT_SIDECAR_LISTEN=tcp://0.0.0.0:${apiPort}"
      "PEAT_SIDECAR_DATA_DIR=${dataDir}"
      "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
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
      "org.opencontainers.image.description" = peat-sidecar.meta.description;
      "org.opencontainers.image.version" = version;
      "org.opencontainers.image.created" = commitTime;
      "org.opencontainers.image.licenses" = "Apache-2.0";
      "org.opencontainers.image.source" = peat-sidecar.meta.homepage;
    };
  };
}
