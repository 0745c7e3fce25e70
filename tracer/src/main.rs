use std::process::ExitCode;

use clap::Parser;
use leaktrace::{cli::Cli, session};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match session::run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // One line, whole cause chain, exit code 2.
            eprintln!("leaktrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
