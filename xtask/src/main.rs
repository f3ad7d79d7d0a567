//! Build, test and release automation for peat-sidecar: `cargo xtask <command>`.
//!
//! Every command installs the tools it needs (apt, pip, rustup) when they are
//! missing, so a fresh machine with only Rust, Python and gcc can run them.

mod dist;
mod nix_check;
mod sh;
mod tools;
mod vm_test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  run [ARGS..]   build and run the sidecar with its embedded defaults
  test           run every test tier (what CI runs)
  dist           build the static binary, .deb, .rpm, OCI image and tarball into dist/
  vm-test        install the packages inside qemu guests and check them
  nix-check      parse and lint the Nix files
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "run" => tools::run_sidecar(rest),
        "test" => tools::test_all(rest),
        "dist" => dist::run(rest),
        "vm-test" => vm_test::run(rest),
        "nix-check" => nix_check::run(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask {command}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
