# Two NixOS machines run the module with the same formation key: a document
# written on one is read on the other, both over `peat-sidecar ctl` and plain
# Connect JSON, the unit carries the packaged hardening, and the key stays out
# of the Nix store, the config file and the journal.
{ pkgs
, module
, peat-sidecar
}:
pkgs.testers.runNixOSTest {
  name = "peat-sidecar-two-node";

  defaults =
    { lib, ... }:
    {
      imports = [ module ];
      services.peat-sidecar = {
        enable = true;
        package = peat-sidecar;
        openFirewall = true;
        environmentFile = "/run/keys/peat-sidecar.env";
        settings = {
          app_id = "nixos-two-node";
          mesh_listen = "tcp://0.0.0.0:7420";
        };
      };
      # Started by the test once the key file exists, as an operator would.
      systemd.services.peat-sidecar.wantedBy = lib.mkForce [ ];
      environment.systemPackages = [ pkgs.curl ];
    };

  nodes = {
    alpha.services.peat-sidecar.settings.peers = [ "beta:7420" ];
    beta.services.peat-sidecar.settings.peers = [ "alpha:7420" ];
  };

  testScript = ''
    import json

    start_all()
    for node in (alpha, beta):
        node.wait_for_unit("multi-user.target")

    # The formation key is made at run time and written outside the store.
    key = alpha.succeed("peat-sidecar keygen").strip()
    assert len(key) >= 40, f"keygen printed {key!r}"
    for node in (alpha, beta):
        node.succeed(
            "umask 077; install -d /run/keys; "
            f"printf 'PEAT_SIDECAR_SHARED_KEY=%s\\n' '{key}' > /run/keys/peat-sidecar.env"
        )
        node.succeed("systemctl start peat-sidecar.service")
    for node in (alpha, beta):
        node.wait_for_unit("peat-sidecar.service")
        node.wait_for_open_port(50051)
        node.wait_for_open_port(7420)

    with subtest("the API serves Connect JSON and gRPC health"):
        health = alpha.succeed(
            "curl -sS -X POST -H 'Content-Type: application/json' -d '{}' "
            "http://127.0.0.1:50051/grpc.health.v1.Health/Check"
        )
        assert json.loads(health)["status"] == "SERVING", health

    with subtest("a document written on alpha is read on beta"):
        alpha.succeed("""peat-sidecar ctl put notes greeting '{"text":"hello from alpha"}'""")
        beta.wait_until_succeeds(
            "peat-sidecar ctl get notes greeting | grep -q 'hello from alpha'", timeout=120
        )

    with subtest("a document written over Connect JSON on beta is read on alpha"):
        beta.succeed(
            "curl -sS --fail -X POST -H 'Content-Type: application/json' "
            """-d '{"collection":"notes","docId":"reply","jsonData":"{\\"text\\":\\"hello from beta\\"}"}' """
            "http://127.0.0.1:50051/peat.sidecar.v1.PeatSidecar/PutDocument"
        )
        alpha.wait_until_succeeds(
            "peat-sidecar ctl get notes reply | grep -q 'hello from beta'", timeout=120
        )

    with subtest("the service runs with the packaged unit's hardening"):
        expected = {
            "Type": "notify",
            "User": "peat-sidecar",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes",
            "LockPersonality": "yes",
            "MemoryDenyWriteExecute": "yes",
            "UMask": "0077",
            "CapabilityBoundingSet": "",
            "StateDirectory": "peat-sidecar",
            "RuntimeDirectory": "peat-sidecar",
        }
        for prop, want in expected.items():
            got = alpha.succeed(f"systemctl show peat-sidecar.service --property={prop} --value").strip()
            assert got == want, f"{prop}: expected {want!r}, systemd reports {got!r}"
        main_pid = alpha.succeed("systemctl show peat-sidecar.service --property=MainPID --value").strip()
        owner = alpha.succeed(f"ps -o user= -p {main_pid}").strip()
        assert owner == "peat-sidecar", f"daemon runs as {owner!r}"
        report = alpha.succeed("systemd-analyze security peat-sidecar.service --no-pager")
        print(report)
        overall = [line for line in report.splitlines() if "Overall exposure level" in line]
        assert overall, "systemd-analyze printed no exposure level"
        exposure = float(overall[0].split(":")[-1].split()[0])
        assert exposure <= 2.0, f"exposure {exposure} is above 2.0"

    with subtest("the formation key is in neither the unit, the config file nor the journal"):
        for node in (alpha, beta):
            node.fail(f"grep -qs '{key}' /etc/peat-sidecar/config.yaml")
            node.fail(f"journalctl -u peat-sidecar.service --no-pager | grep -q '{key}'")
            node.fail(f"systemctl cat peat-sidecar.service | grep -q '{key}'")

    with subtest("the service stops promptly on SIGTERM"):
        alpha.succeed("timeout 30 systemctl stop peat-sidecar.service")
        alpha.fail("systemctl is-failed peat-sidecar.service")
  '';
}
