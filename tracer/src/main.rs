use std::process::ExitCode;

use clap::Parser;
use leaktrace::{cli::Cli, session};

fn main() -> ExitCode {
    // leaktrace's own helper, which no user runs (see resume_watchdog).
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(session::resume_watchdog::ARG) {
        let map_id = args.next().unwrap_or_default();
        return ExitCode::from(session::resume_watchdog::run(&map_id));
    }
    let cli = Cli::parse();
    if let Some(kind) = cli.generate {
        // Needs no privileges and no target.
        return match leaktrace::cli::generate(kind, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("leaktrace: error: --generate: {e}");
                ExitCode::from(2)
            }
        };
    }
    match session::run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            if let Some(stopped) = e.downcast_ref::<session::stop::Interrupted>() {
                eprintln!("leaktrace: {stopped}");
                return ExitCode::from(u8::try_from(stopped.exit_code()).unwrap_or(130));
            }
            // One line, whole cause chain, exit code 2.
            eprintln!("leaktrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
