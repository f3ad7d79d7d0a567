# Evaluates nixos-module/ with lib.evalModules alone: the NixOS options the
# module writes to are declared here as plain containers and `pkgs` is a
# stand-in that records what would be built. This checks the option types,
# defaults, assertions and the systemd service derived from the packaged
# unit without a full nixpkgs checkout:
#
#   nix-instantiate --eval --strict --json nix/tests/module-eval.nix \
#     --arg lib 'import <nixpkgs/lib>'
#
# The result lists, per scenario, the failed assertions and the service as
# NixOS would receive it; `expectations` throws when one does not hold.
{ lib }:
let
  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = "peat-sidecar";
  };

  pkgs = {
    peat-sidecar = fakeDrv "peat-sidecar-0.1.0";
    formats.yaml = _: {
      type = lib.types.attrsOf lib.types.anything;
      # A store-path-like value that also keeps what would be rendered.
      generate = name: value: (fakeDrv name) // { rendered = value; };
    };
    runCommand = name: _: _: "/nix/store/00000000000000000000000000000000-${name}";
  };

  # The NixOS options the module sets, reduced to containers.
  nixosStubs = {
    options = {
      assertions = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
      environment.systemPackages = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
      environment.etc = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      users.users = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      users.groups = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      networking.firewall.allowedTCPPorts = lib.mkOption { type = lib.types.listOf lib.types.port; default = [ ]; };
      systemd.tmpfiles.settings = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      systemd.services = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
    };
  };

  evaluate =
    settings:
    (lib.evalModules {
      specialArgs = { inherit pkgs; };
      modules = [
        nixosStubs
        ../../nixos-module
        { services.peat-sidecar = settings; }
      ];
    }).config;

  summary =
    config:
    {
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      firewall = config.networking.firewall.allowedTCPPorts;
      tmpfiles = config.systemd.tmpfiles.settings;
      service = config.systemd.services.peat-sidecar or null;
      configFile = config.environment.etc."peat-sidecar/config.yaml".source or null;
    };

  scenarios = {
    minimal = evaluate { enable = true; };
    mesh = evaluate {
      enable = true;
      openFirewall = true;
      environmentFile = "/run/secrets/peat-sidecar.env";
      settings = {
        app_id = "formation-a";
        mesh_listen = "tcp://0.0.0.0:7500";
        peers = [ "10.0.0.2:7500" ];
        data_dir = "/srv/peat";
        log_format = "json";
      };
    };
    secretInSettings = evaluate {
      enable = true;
      settings.shared_key = "must-not-be-in-the-store";
    };
    disabled = evaluate { enable = false; };
  };

  results = lib.mapAttrs (_: summary) scenarios;
  service = results.mesh.service;

  # A store path for the secrets file must be refused by its type.
  storeEnvFileRejected =
    !(builtins.tryEval (builtins.deepSeq
      (evaluate {
        enable = true;
        environmentFile = "/nix/store/00000000000000000000000000000000-secrets.env";
      }).systemd.services.peat-sidecar.serviceConfig.EnvironmentFile
      true)).success;

  expect = name: ok: if ok then name else throw "module-eval: expectation failed: ${name}";
  expectations = map (e: expect e.name e.ok) [
    { name = "minimal config has no failed assertions"; ok = results.minimal.failedAssertions == [ ]; }
    { name = "disabled module defines no service"; ok = results.disabled.service == null; }
    { name = "mesh port from mesh_listen is opened"; ok = results.mesh.firewall == [ 7500 ]; }
    { name = "firewall stays closed by default"; ok = results.minimal.firewall == [ ]; }
    { name = "secrets in settings are refused"; ok = builtins.length results.secretInSettings.failedAssertions == 1; }
    { name = "secrets file outside the store is used"; ok = service.serviceConfig.EnvironmentFile == [ "/run/secrets/peat-sidecar.env" ]; }
    { name = "secrets file in the store is rejected"; ok = storeEnvFileRejected; }
    { name = "packaged hardening is carried over"; ok = service.serviceConfig.ProtectSystem == "strict" && service.serviceConfig.NoNewPrivileges == "yes" && service.serviceConfig.CapabilityBoundingSet == ""; }
    { name = "repeated unit keys stay repeated"; ok = builtins.isList service.serviceConfig.SystemCallFilter; }
    { name = "ExecStart runs the configured package with the generated config"; ok = lib.hasInfix "peat-sidecar-0.1.0/bin/peat-sidecar --config /nix/store/" service.serviceConfig.ExecStart; }
    { name = "custom data dir is created and writable"; ok = results.mesh.tmpfiles ? peat-sidecar && builtins.elem "/srv/peat" service.serviceConfig.ReadWritePaths; }
    { name = "unit ordering comes from the packaged unit"; ok = builtins.elem "network-online.target" service.after && builtins.elem "multi-user.target" service.wantedBy; }
  ];
in
{
  inherit expectations;
  inherit (results.mesh) service;
  renderedSettings = (evaluate {
    enable = true;
    checkConfig = false;
    settings.peers = [ "a:7420" ];
  }).environment.etc."peat-sidecar/config.yaml".source.rendered;
}
