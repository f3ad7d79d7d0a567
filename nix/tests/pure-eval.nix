# Checks of the flake's own helpers that need nothing but Nix itself, so
# `cargo xtask nix-check` runs them on any machine with `nix-instantiate`:
#
#   nix-instantiate --eval --strict nix/tests/pure-eval.nix
#
# Evaluates to the list of passed checks, or throws naming the failed one.
let
  isoDate = import ../iso-date.nix;
  parseUnit = import ../systemd-unit.nix;
  packagedUnit = parseUnit (builtins.readFile ../../packaging/peat-sidecar.service);
  sample = parseUnit ''
    [Unit]
    Description=sample
    After=a.target b.service

    [Service]
    # comment
    ; also a comment
    Type=notify
    CapabilityBoundingSet=
    SystemCallFilter=@system-service
    SystemCallFilter=~@privileged \
      @resources
  '';

  # What the NixOS module and the VM checks rely on in the packaged unit.
  hardeningKeys = [
    "NoNewPrivileges"
    "ProtectSystem"
    "ProtectHome"
    "PrivateTmp"
    "PrivateDevices"
    "ProtectKernelTunables"
    "ProtectKernelModules"
    "ProtectControlGroups"
    "RestrictAddressFamilies"
    "RestrictNamespaces"
    "LockPersonality"
    "MemoryDenyWriteExecute"
    "SystemCallFilter"
    "SystemCallArchitectures"
    "CapabilityBoundingSet"
    "UMask"
    "StateDirectory"
    "RuntimeDirectory"
  ];

  checks = [
    { name = "epoch 0 is 1970-01-01T00:00:00Z"; ok = isoDate 0 == "1970-01-01T00:00:00Z"; }
    { name = "leap day 2000"; ok = isoDate 951782400 == "2000-02-29T00:00:00Z"; }
    { name = "last second of 2024-02-29"; ok = isoDate 1709251199 == "2024-02-29T23:59:59Z"; }
    { name = "a 2026 commit time"; ok = isoDate 1785782307 == "2026-08-03T18:38:27Z"; }
    { name = "unit sections are read"; ok = builtins.attrNames sample == [ "Service" "Unit" ]; }
    { name = "comments are skipped"; ok = builtins.length (builtins.attrNames sample.Service) == 3; }
    { name = "empty assignments are kept"; ok = sample.Service.CapabilityBoundingSet == [ "" ]; }
    { name = "repeated keys keep file order"; ok = builtins.head sample.Service.SystemCallFilter == "@system-service"; }
    { name = "continued lines are joined"; ok = builtins.match "~@privileged +@resources" (builtins.elemAt sample.Service.SystemCallFilter 1) != null; }
    { name = "packaged unit is Type=notify"; ok = packagedUnit.Service.Type == [ "notify" ]; }
    { name = "packaged unit runs as peat-sidecar"; ok = packagedUnit.Service.User == [ "peat-sidecar" ]; }
    { name = "packaged unit has an ExecStart to replace"; ok = packagedUnit.Service ? ExecStart; }
    { name = "packaged unit carries every hardening key"; ok = builtins.all (key: packagedUnit.Service ? ${key}) hardeningKeys; }
    { name = "packaged unit is wanted by multi-user.target"; ok = packagedUnit.Install.WantedBy == [ "multi-user.target" ]; }
  ];
in
map (c: if c.ok then c.name else throw "pure-eval: check failed: ${c.name}") checks
