//! The `peat-sidecar` binary: parses the command line and dispatches.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use peat_sidecar::cli::{Cli, Command, ConfigCommand, GenerateCommand};
use peat_sidecar::config::Settings;

#[cfg(feature = "mimalloc")]
mod alloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peat-sidecar: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = Settings::load(&cli.settings)?;
            peat_sidecar::logging::init(&settings.log_level, settings.log_format)?;
            runtime()?.block_on(peat_sidecar::daemon::run(settings))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check) => {
            let settings = Settings::load(&cli.settings)?;
            settings.shared_key()?;
            settings.encryption_key()?;
            peat_sidecar::mesh::MeshOptions::from_settings(&settings)?;
            peat_sidecar::watcher::settings::check(&settings)?;
            print!("{}", settings.to_redacted_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen => {
            println!("{}", peat_sidecar::store::crypto::generate_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => {
            let settings = Settings::load(&cli.settings)?;
            let code = runtime()?.block_on(peat_sidecar::ctl::run(args, &settings.listen))?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Generate(GenerateCommand::Man { dir }) => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            std::fs::write(dir.join("peat-sidecar.1"), page)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(GenerateCommand::Completions { dir }) => {
            use clap_complete::Shell;
            for (shell, name) in
                [(Shell::Bash, "peat-sidecar.bash"), (Shell::Zsh, "_peat-sidecar"), (Shell::Fish, "peat-sidecar.fish")]
            {
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "peat-sidecar", &mut out);
                std::fs::write(dir.join(name), out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
