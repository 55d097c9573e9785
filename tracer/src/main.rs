//! dispatch-leaktrace: where a running process's memory goes. This file only wires: options in, one
//! session, a one-line error out.

mod cli;
mod collector;
mod inputs;
mod ledger;
mod privileges;
mod probes;
mod procfs;
mod reports;
mod session;
mod symbolizer;
mod target;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A bug must not print a backtrace at the user; the probes detach when the process ends either way.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("dispatch-leaktrace: internal error: {info} (please report it)");
    }));
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "mark") {
        return match inputs::control::mark(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("dispatch-leaktrace: error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let message = error.to_string();
            let first = message.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("dispatch-leaktrace: error: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match session::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dispatch-leaktrace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
