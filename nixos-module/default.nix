# NixOS module: services.peat-sidecar.
#
# The systemd service is the packaged unit (packaging/peat-sidecar.service)
# read directive by directive, so the hardening on NixOS is the same as on
# Debian/Ubuntu/Rocky by construction. Only ExecStart (the configured package
# and a generated config file) and EnvironmentFile (the secrets file) are
# replaced. Secrets never enter the Nix store: the settings refuse them, and
# the environment file is typed as a path outside the store.
{ config
, lib
, pkgs
, ...
}:
let
  cfg = config.services.peat-sidecar;

  defaultDataDir = "/var/lib/peat-sidecar";
  defaultMeshPort = 7420;

  unit = import ../nix/systemd-unit.nix (builtins.readFile ../packaging/peat-sidecar.service);
  # One assignment stays a plain value; repeated keys stay a list, which
  # NixOS renders as repeated lines, as in the packaged file.
  flatten = values: if builtins.length values == 1 then builtins.head values else values;
  words = values: builtins.filter (word: word != "") (lib.concatMap (lib.splitString " ") values);
  replacedServiceKeys = [
    "ExecStart"
    "EnvironmentFile"
  ];
  unitSectionKeys = [
    "Description"
    "After"
    "Wants"
    "Requires"
  ];

  settingsFormat = pkgs.formats.yaml { };
  # Unset options are left out so the daemon applies its own defaults.
  renderedSettings = lib.filterAttrsRecursive (_: value: value != null) cfg.settings;
  settingsFile = settingsFormat.generate "peat-sidecar.yaml" renderedSettings;
  # The daemon rejects unknown keys; checking at build time turns a typo in
  # `settings` into a build error instead of a failed unit. Secret files are
  # left out of the checked copy: `config check` reads them, and they exist
  # only on the running host.
  secretFileKeys = [
    "shared_key_file"
    "encryption_key_file"
  ];
  checkedSettingsFile = settingsFormat.generate "peat-sidecar-check.yaml" (
    removeAttrs renderedSettings secretFileKeys
  );
  configFile =
    if cfg.checkConfig then
      pkgs.runCommand "peat-sidecar-config.yaml" { } ''
        env -i ${lib.getExe cfg.package} --config ${checkedSettingsFile} config check > /dev/null
        cp ${settingsFile} $out
      ''
    else
      settingsFile;

  meshListen = cfg.settings.mesh_listen;
  meshPort =
    if meshListen == null then
      defaultMeshPort
    else if meshListen == "disabled" then
      null
    else
      lib.toInt (lib.last (lib.splitString ":" meshListen));

  secretKeys = [
    "shared_key"
    "encryption_key"
  ];
in
{
  options.services.peat-sidecar = {
    enable = lib.mkEnableOption "peat-sidecar, the CRDT mesh-sync sidecar";

    package = lib.mkPackageOption pkgs "peat-sidecar" {
      extraDescription = ''
        The flake's overlay (`overlays.default`) provides this attribute; the
        flake's `nixosModules.default` sets it to the flake's own build.
      '';
    };

    settings = lib.mkOption {
      description = ''
        Settings written to the YAML config file the service reads
        ({file}`/etc/peat-sidecar/config.yaml`, also read by
        `peat-sidecar ctl` and `peat-sidecar config check`). Keys are the
        daemon's settings (snake_case); unknown keys are an error. Secrets
        (`shared_key`, `encryption_key`) are refused here because this file
        is world-readable in the Nix store: put them in
        {option}`services.peat-sidecar.environmentFile`
        (`PEAT_SIDECAR_SHARED_KEY=…`) or point `shared_key_file` /
        `encryption_key_file` at a file outside the store.
      '';
      default = { };
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
        options = {
          listen = lib.mkOption {
            type = lib.types.str;
            default = "tcp://127.0.0.1:50051";
            example = "unix:///run/peat-sidecar/peat-sidecar.sock";
            description = "API address: `tcp://HOST:PORT` or `unix:///path/to.sock`.";
          };
          mesh_listen = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "tcp://0.0.0.0:7420";
            description = ''
              Mesh listen address (`tcp://HOST:PORT` or `disabled`). Unset
              means `tcp://0.0.0.0:${toString defaultMeshPort}`, which stays
              closed until a shared key is configured.
            '';
          };
          app_id = lib.mkOption {
            type = lib.types.str;
            default = "peat-default";
            description = "Formation id; only sidecars with the same id sync.";
          };
          peers = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ ];
            example = [
              "10.0.0.2:7420"
              "node-b@10.0.0.3:7420"
            ];
            description = "Mesh peers to dial: `host:port` or `node_id@host:port`.";
          };
          data_dir = lib.mkOption {
            type = lib.types.externalPath;
            default = defaultDataDir;
            description = ''
              Document store directory. The default is the service's
              StateDirectory; another directory is created for the service
              user and made writable despite `ProtectSystem=strict`.
            '';
          };
        };
      };
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.externalPath;
      default = null;
      example = "/run/secrets/peat-sidecar.env";
      description = ''
        File of `PEAT_SIDECAR_*` variables loaded by systemd, for secrets
        such as `PEAT_SIDECAR_SHARED_KEY` (the formation key) and
        `PEAT_SIDECAR_ENCRYPTION_KEY`. It must live outside the Nix store
        (a path literal would be copied into the world-readable store, so
        only strings are accepted).
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the mesh port (taken from `settings.mesh_listen`) in the firewall.";
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Validate the generated config file with `peat-sidecar config check` at build time.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = builtins.all (key: !(cfg.settings ? ${key})) secretKeys;
        message = ''
          services.peat-sidecar.settings must not contain ${lib.concatStringsSep " or " secretKeys}:
          the settings file is world-readable in the Nix store. Use
          services.peat-sidecar.environmentFile (PEAT_SIDECAR_SHARED_KEY=…) or
          settings.shared_key_file / settings.encryption_key_file instead.
        '';
      }
      {
        assertion = !cfg.openFirewall || meshPort != null;
        message = "services.peat-sidecar.openFirewall needs a mesh port, but settings.mesh_listen is `disabled`.";
      }
    ];

    environment.systemPackages = [ cfg.package ];
    environment.etc."peat-sidecar/config.yaml".source = configFile;

    # The same static system account the packages create with sysusers.
    users.users.peat-sidecar = {
      isSystemUser = true;
      group = "peat-sidecar";
      home = defaultDataDir;
      description = "peat-sidecar daemon";
    };
    users.groups.peat-sidecar = { };

    systemd.tmpfiles.settings.peat-sidecar = lib.mkIf (cfg.settings.data_dir != defaultDataDir) {
      ${cfg.settings.data_dir}.d = {
        user = "peat-sidecar";
        group = "peat-sidecar";
        mode = "0750";
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf (cfg.openFirewall && meshPort != null) [ meshPort ];

    systemd.services.peat-sidecar = {
      description = flatten (unit.Unit.Description or [ "peat-sidecar" ]);
      after = words (unit.Unit.After or [ ]);
      wants = words (unit.Unit.Wants or [ ]);
      requires = words (unit.Unit.Requires or [ ]);
      wantedBy = words (unit.Install.WantedBy or [ "multi-user.target" ]);
      unitConfig = lib.mapAttrs (_: flatten) (removeAttrs unit.Unit unitSectionKeys);
      serviceConfig =
        lib.mapAttrs (_: flatten) (removeAttrs unit.Service replacedServiceKeys)
        // {
          ExecStart = "${lib.getExe cfg.package} --config ${configFile} serve";
          EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
          ReadWritePaths =
            (unit.Service.ReadWritePaths or [ ])
            ++ lib.optional (cfg.settings.data_dir != defaultDataDir) cfg.settings.data_dir;
        };
    };
  };
}
