{
  description = "peat-sidecar: CRDT mesh-sync sidecar (static binary, deb, rpm, OCI image, NixOS module)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    advisory-db = {
      url = "github:rustsec/advisory-db";
      flake = false;
    };
  };

  # The flake only wires things together: the build recipe is Cargo's, the
  # package recipe is packaging/nfpm.yaml, the unit is packaging/peat-sidecar.service
  # and the guest test is tests/vm/guest-check.sh, all shared with `cargo xtask`.
  outputs =
    { self
    , nixpkgs
    , crane
    , rust-overlay
    , advisory-db
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      root = ./.;
      # File and package times: the last commit, as in the Nix-free build.
      sourceDateEpoch = self.lastModified or 1;
      revision = self.rev or self.dirtyRev or "unknown";
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);

      # The packaging recipe names its architecture through PEAT_PKG_ARCH or
      # not at all; without it, it describes amd64 packages only.
      nfpmRecipe = builtins.readFile ./packaging/nfpm.yaml;
      nfpmTakesArch = lib.hasInfix "\${PEAT_PKG_ARCH}" nfpmRecipe;

      # Everything built from this repository for one package set. A
      # non-empty salt gives an independent second build of the whole chain.
      artifactsFor =
        pkgs: salt:
        let
          rust = import ./nix/package.nix {
            inherit
              pkgs
              crane
              advisory-db
              root
              salt
              ;
          };
          inherit (rust) peat-sidecar;
          osPackage =
            packager: release:
            import ./nix/nfpm.nix {
              inherit
                pkgs
                root
                peat-sidecar
                packager
                release
                sourceDateEpoch
                ;
            };
        in
        {
          inherit rust peat-sidecar;
          deb = osPackage "deb" "1";
          rpm = osPackage "rpm" "1";
          # A higher release of the same build, for the upgrade step of the VM checks.
          deb-upgrade = osPackage "deb" "2";
          rpm-upgrade = osPackage "rpm" "2";
          oci = import ./nix/oci.nix {
            inherit pkgs peat-sidecar cargoToml revision sourceDateEpoch;
          };
        };

      perSystem = lib.genAttrs systems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system}.extend rust-overlay.overlays.default;
          built = artifactsFor pkgs "";
          rebuilt = artifactsFor pkgs "second-build";
          isX86 = pkgs.stdenv.hostPlatform.isx86_64;
          withOsPackages = isX86 || nfpmTakesArch;
          osPackages = lib.optionalAttrs withOsPackages { inherit (built) deb rpm; };

          app = pkgs.writeShellApplication {
            name = "peat-sidecar-run";
            text = ''
              # A data directory the invoking user owns, unless one is chosen
              # explicitly (environment, or --data-dir, which wins over both).
              export PEAT_SIDECAR_DATA_DIR="''${PEAT_SIDECAR_DATA_DIR:-''${XDG_STATE_HOME:-$HOME/.local/state}/peat-sidecar}"
              exec ${lib.getExe built.peat-sidecar} "$@"
            '';
          };

          cloudImageChecks = lib.mapAttrs'
            (
              name: image:
                lib.nameValuePair "vm-${name}" (
                  import ./nix/tests/cloud-vm.nix {
                    inherit pkgs name image;
                    packages =
                      if image.family == "deb" then
                        {
                          install = built.deb;
                          upgrade = built.deb-upgrade;
                        }
                      else
                        {
                          install = built.rpm;
                          upgrade = built.rpm-upgrade;
                        };
                    guestCheck = ./tests/vm/guest-check.sh;
                    powerCut = ./tests/vm/power-cut.sh;
                    binary = lib.getExe built.peat-sidecar;
                  }
                )
            )
            (import ./nix/tests/cloud-images.nix);
        in
        {
          packages = {
            inherit (built) peat-sidecar oci;
            default = built.peat-sidecar;
          }
          // osPackages;

          apps.default = {
            type = "app";
            program = lib.getExe app;
            meta.description = "Run peat-sidecar with its API on 127.0.0.1:50051 and data under ~/.local/state";
          };

          checks = {
            inherit (built) peat-sidecar;
            cargo-clippy = built.rust.checks.clippy;
            cargo-fmt = built.rust.checks.fmt;
            cargo-nextest = built.rust.checks.nextest;
            cargo-audit = built.rust.checks.audit;
            # The evaluation tests `cargo xtask nix-check` runs, here with nixpkgs' own lib.
            nix-lock = pkgs.writeText "lock-check.json" (builtins.toJSON (import ./nix/tests/lock-check.nix));
            nix-helpers = pkgs.writeText "pure-eval.json" (builtins.toJSON (import ./nix/tests/pure-eval.nix));
            nix-wiring = pkgs.writeText "flake-wiring.json" (
              builtins.toJSON (import ./nix/tests/flake-wiring.nix { inherit lib; })
            );
            nixos-module-eval = pkgs.writeText "module-eval.json" (
              builtins.toJSON (import ./nix/tests/module-eval.nix { inherit lib; }).expectations
            );
            nixos-two-node = import ./nix/tests/nixos-two-node.nix {
              inherit pkgs;
              inherit (built) peat-sidecar;
              module = self.nixosModules.default;
            };
          }
          // lib.optionalAttrs withOsPackages {
            reproducible = import ./nix/tests/reproducible.nix {
              inherit pkgs;
              first = { inherit (built) deb rpm oci; };
              second = { inherit (rebuilt) deb rpm oci; };
            };
          }
          # The pinned cloud images are amd64 images.
          // lib.optionalAttrs isX86 cloudImageChecks;

          devShells.default = pkgs.mkShell {
            packages = [
              built.rust.toolchain
              pkgs.protobuf
              pkgs.nfpm
              pkgs.qemu
              pkgs.cargo-nextest
              pkgs.cargo-audit
              pkgs.nixpkgs-fmt
              pkgs.deadnix
              pkgs.shellcheck
            ];
            # `cargo build --target <musl>` links and compiles C the way the
            # package does (musl compiler by absolute path, so $CC stays the
            # native one); plain `cargo build` stays a native build.
            env = removeAttrs built.rust.buildEnv [
              "CARGO_BUILD_TARGET"
              "CARGO_BUILD_RUSTFLAGS"
            ];
          };

          formatter = pkgs.nixpkgs-fmt;
        }
      );
    in
    {
      packages = lib.mapAttrs (_: s: s.packages) perSystem;
      apps = lib.mapAttrs (_: s: s.apps) perSystem;
      checks = lib.mapAttrs (_: s: s.checks) perSystem;
      devShells = lib.mapAttrs (_: s: s.devShells) perSystem;
      formatter = lib.mapAttrs (_: s: s.formatter) perSystem;

      overlays.default = final: _prev: {
        peat-sidecar = self.packages.${final.stdenv.hostPlatform.system}.peat-sidecar;
      };

      # The module from nixos-module/, with this flake's build as the default package.
      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.peat-sidecar.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.peat-sidecar;
        };
    };
}
