# Evaluates flake.nix's outputs with stand-ins for nixpkgs' packages, crane
# and rust-overlay (nixpkgs' real lib), so the wiring between flake.nix and
# nix/*.nix is exercised without fetching any input: every output exists for
# both systems, every file receives the arguments it takes, and the values
# that reach the builders (nfpm environment, image config, crane arguments,
# VM check inputs) are the intended ones.
#
#   nix-instantiate --eval --strict --json nix/tests/flake-wiring.nix \
#     --arg lib 'import <nixpkgs/lib>'
#
# Evaluates to the list of passed checks, or throws naming the failed one.
{ lib }:
let
  # lib.fileset needs builtins.readFileType (Nix >= 2.14); file sets are
  # recorded instead, which also lets the checks look at their parts.
  recordingLib = lib // {
    fileset = {
      toSource = args: args // { outPath = fakePath "source"; };
      unions = sets: { unions = sets; };
      fileFilter = predicate: path: { inherit predicate path; };
    };
  };
  protoFile = {
    name = "sidecar.proto";
    hasExt = ext: ext == "proto";
  };

  fakePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  drv = name: attrs: attrs // {
    type = "derivation";
    inherit name;
    outPath = fakePath name;
  };

  stubPkgs =
    system:
    let
      cpu = lib.head (lib.splitString "-" system);
      muslTarget = "${cpu}-unknown-linux-musl";
      self = {
        lib = recordingLib;
        stdenv.hostPlatform = {
          inherit system;
          isx86_64 = cpu == "x86_64";
        };
        pkgsStatic.stdenv = {
          hostPlatform.rust.rustcTarget = muslTarget;
          cc = drv "musl-cc" { targetPrefix = "${muslTarget}-"; };
        };
        rust-bin.stable."1.95.0".default.override = args: drv "rust-1.95.0" { inherit (args) targets; };
        runCommand = name: env: script: drv name { inherit env script; };
        writeText = name: text: drv name { inherit text; };
        writeShellApplication = args: drv args.name {
          inherit (args) text;
          meta.mainProgram = args.name;
        };
        mkShell = args: drv "shell" { inherit args; };
        fetchurl = args: drv args.name { inherit args; };
        dockerTools.buildLayeredImage = args: drv "${args.name}.tar.gz" { inherit args; };
        testers.runNixOSTest = args: drv "vm-test-run-${args.name}" { inherit args; };
      }
      // lib.genAttrs [
        "protobuf"
        "nfpm"
        "gzip"
        "qemu"
        "qemu_kvm"
        "openssh"
        "cdrkit"
        "cargo-nextest"
        "cargo-audit"
        "nixpkgs-fmt"
        "deadnix"
        "shellcheck"
        "diffoscopeMinimal"
      ]
        (name: drv name { });
    in
    self // { extend = _overlay: self; };

  crane = {
    mkLib = _pkgs: {
      overrideToolchain = _toolchain: craneLib;
    };
  };
  craneLib = {
    fileset.commonCargoSources = root: { cargoSourcesOf = root; };
    crateNameFromCargoToml =
      { cargoToml }:
      {
        pname = (builtins.fromTOML (builtins.readFile cargoToml)).package.name;
        inherit ((builtins.fromTOML (builtins.readFile cargoToml)).package) version;
      };
    buildDepsOnly = args: drv "${args.pname}-deps-${args.version}" { inherit args; };
    buildPackage = args: drv "${args.pname}-${args.version}" {
      inherit args;
      inherit (args) version meta;
    };
    cargoClippy = args: drv "clippy" { inherit args; };
    cargoFmt = args: drv "fmt" { inherit args; };
    cargoNextest = args: drv "nextest" { inherit args; };
    cargoAudit = args: drv "audit" { inherit args; };
  };

  flake = import ../../flake.nix;
  inputs = {
    nixpkgs = {
      lib = recordingLib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs;
    };
    inherit crane;
    rust-overlay.overlays.default = _final: _prev: { };
    advisory-db = fakePath "advisory-db";
  };
  outputs = flake.outputs (inputs // { self = outputs // selfInfo; });
  selfInfo = {
    lastModified = 1785782307;
    rev = "0123456789abcdef0123456789abcdef01234567";
    outPath = ../..;
  };

  x86 = "x86_64-linux";
  arm = "aarch64-linux";
  pkgsX86 = outputs.packages.${x86};
  checksX86 = outputs.checks.${x86};
  names = builtins.attrNames;

  checks = [
    {
      name = "x86_64 packages: default, peat-sidecar, deb, rpm, oci";
      ok = names pkgsX86 == [ "deb" "default" "oci" "peat-sidecar" "rpm" ];
    }
    {
      name = "aarch64 offers no deb/rpm until nfpm.yaml takes PEAT_PKG_ARCH";
      ok =
        let
          takesArch = lib.hasInfix "\${PEAT_PKG_ARCH}" (builtins.readFile ../../packaging/nfpm.yaml);
        in
        names outputs.packages.${arm}
        == (if takesArch then [ "deb" "default" "oci" "peat-sidecar" "rpm" ] else [ "default" "oci" "peat-sidecar" ]);
    }
    {
      name = "checks on x86_64";
      ok =
        names checksX86 == [
          "cargo-audit"
          "cargo-clippy"
          "cargo-fmt"
          "cargo-nextest"
          "nix-helpers"
          "nix-lock"
          "nix-wiring"
          "nixos-module-eval"
          "nixos-two-node"
          "peat-sidecar"
          "reproducible"
          "vm-rocky-8"
          "vm-rocky-9"
          "vm-ubuntu-22_04"
          "vm-ubuntu-24_04"
        ];
    }
    {
      name = "no cloud-image checks on aarch64";
      ok = !(lib.any (lib.hasPrefix "vm-") (names outputs.checks.${arm}));
    }
    {
      name = "the binary is the crane package of Cargo.toml's version";
      ok = pkgsX86.default == pkgsX86.peat-sidecar && pkgsX86.peat-sidecar.name == "peat-sidecar-0.1.0";
    }
    {
      name = "musl target, static CRT, musl C compiler and protoc";
      ok =
        let
          a = pkgsX86.peat-sidecar.args;
        in
        a.CARGO_BUILD_TARGET == "x86_64-unknown-linux-musl"
        && a.CARGO_BUILD_RUSTFLAGS == "-C target-feature=+crt-static"
        && lib.hasSuffix "musl-cc/bin/x86_64-unknown-linux-musl-cc" a.CC_x86_64_unknown_linux_musl
        && a.CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER == a.CC_x86_64_unknown_linux_musl
        && a.nativeBuildInputs == [ (stubPkgs x86).protobuf ]
        && a.doCheck == false;
    }
    {
      name = "the source is crane's Cargo files plus the .proto files under proto/";
      ok =
        let
          src = pkgsX86.peat-sidecar.args.src;
          parts = src.fileset.unions;
          protoPart = builtins.elemAt parts 1;
        in
        src.root == ../..
        && (builtins.head parts).cargoSourcesOf == ../..
        && protoPart.path == ../../proto
        && protoPart.predicate protoFile
        && !(protoPart.predicate (protoFile // { hasExt = ext: ext == "md"; }));
    }
    {
      name = "nfpm runs in a copy of packaging/ only";
      ok = pkgsX86.deb.env ? PEAT_PKG_BIN && lib.hasInfix "cd ${fakePath "source"}" pkgsX86.deb.script;
    }
    {
      name = "deb and rpm are nfpm runs with the recipe's inputs";
      ok = lib.all
        (p:
          p.env.PEAT_PKG_VERSION == "0.1.0"
          && p.env.PEAT_PKG_RELEASE == "1"
          && p.env.PEAT_PKG_ARCH == "amd64"
          && p.env.SOURCE_DATE_EPOCH == "1785782307"
          && lib.hasSuffix "/bin/peat-sidecar" p.env.PEAT_PKG_BIN
          && lib.hasInfix "--config packaging/nfpm.yaml" p.script)
        [ pkgsX86.deb pkgsX86.rpm ];
    }
    {
      name = "the packager is the one asked for";
      ok = lib.hasInfix "--packager deb" pkgsX86.deb.script && lib.hasInfix "--packager rpm" pkgsX86.rpm.script;
    }
    {
      name = "the image matches the Nix-free image's config";
      ok =
        let
          c = pkgsX86.oci.args.config;
        in
        c.Entrypoint == [ "/usr/bin/peat-sidecar" ]
        && c.Cmd == [ "serve" ]
        && c.User == "65532:65532"
        && c.Labels."org.opencontainers.image.created" == "2026-08-03T18:38:27Z"
        && c.Labels."org.opencontainers.image.revision" == selfInfo.rev
        && pkgsX86.oci.args.created == "2026-08-03T18:38:27Z";
    }
    {
      name = "VM checks boot the pinned image with the right package family";
      ok =
        let
          ubuntu = checksX86.vm-ubuntu-24_04.env;
          rocky = checksX86.vm-rocky-9.env;
        in
        ubuntu.requiredSystemFeatures == [ "kvm" ]
        && lib.hasInfix "sh ./guest-check.sh deb" checksX86.vm-ubuntu-24_04.script
        && lib.hasInfix "sh ./guest-check.sh rpm" checksX86.vm-rocky-9.script
        && lib.hasInfix "-0.1.0-1-deb/*" checksX86.vm-ubuntu-22_04.script
        && lib.hasInfix "-0.1.0-1-rpm/*" checksX86.vm-rocky-8.script
        && rocky.requiredSystemFeatures == [ "kvm" ];
    }
    {
      name = "VM checks cut the power under the static binary right after a checkpoint, and verify after a second boot";
      ok = lib.all
        (
          check:
          lib.hasInfix "power-cut.sh write $data_disk" check.script
          && lib.hasInfix "power-cut.sh verify $data_disk" check.script
          && lib.hasInfix "kill -KILL $qemu_pid" check.script
          && lib.hasInfix "tail -n 1 | grep -q '^checkpoint done'" check.script
          && lib.hasInfix "/bin/peat-sidecar vm:/tmp/peat-power-cut/peat-sidecar" check.script
        )
        [ checksX86.vm-ubuntu-22_04 checksX86.vm-rocky-9 ];
    }
    {
      name = "the upgrade package is release 2";
      ok = lib.hasInfix "-0.1.0-2-deb/*" checksX86.vm-ubuntu-22_04.script && lib.hasInfix "-0.1.0-2-rpm/*" checksX86.vm-rocky-8.script;
    }
    {
      name = "reproducibility compares two independent builds";
      ok = lib.hasInfix "compare deb" checksX86.reproducible.script
        && builtins.length (lib.splitString "-deb " checksX86.reproducible.script) >= 3;
    }
    {
      name = "the NixOS test uses the flake's module and package";
      ok =
        let
          node = checksX86.nixos-two-node.args.defaults { inherit lib; };
        in
        builtins.isFunction (builtins.head node.imports)
        && node.services.peat-sidecar.package == pkgsX86.peat-sidecar;
    }
    {
      name = "nixosModules.default is nixos-module/ with the flake's package as default";
      ok =
        let
          module = outputs.nixosModules.default { pkgs = stubPkgs x86; };
        in
        module.imports == [ ../../nixos-module ]
        && module.services.peat-sidecar.package.content == pkgsX86.peat-sidecar;
    }
    {
      name = "nix run starts the binary with a user data directory";
      ok =
        let
          app = outputs.apps.${x86}.default;
        in
        app.type == "app" && lib.hasSuffix "/bin/peat-sidecar-run" app.program;
    }
    {
      name = "dev shell: musl toolchain, protoc, nfpm, qemu; native CC kept";
      ok =
        let
          a = outputs.devShells.${x86}.default.args;
        in
        builtins.elem (stubPkgs x86).nfpm a.packages
        && builtins.elem (stubPkgs x86).qemu a.packages
        && !(a.env ? CARGO_BUILD_TARGET)
        && a.env ? CC_x86_64_unknown_linux_musl;
    }
    {
      name = "overlay exposes the package";
      ok = (outputs.overlays.default (stubPkgs x86) { }).peat-sidecar == pkgsX86.peat-sidecar;
    }
    {
      name = "formatter is nixpkgs-fmt";
      ok = outputs.formatter.${x86}.name == "nixpkgs-fmt";
    }
  ];
in
map (c: if c.ok then c.name else throw "flake-wiring: check failed: ${c.name}") checks
