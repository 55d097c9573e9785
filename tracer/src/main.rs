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

use std::{ffi::OsString, process::ExitCode};

use clap::Parser;

fn main() -> ExitCode {
    // A bug must not print a backtrace at the user; the probes detach when the process ends either way.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("dispatch-leaktrace: internal error: {info} (please report it)");
    }));
    // As the OS gives them: `std::env::args` would panic on an argument that is not UTF-8.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "mark") {
        let mark_args: Vec<String> = args[2..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
        if cli::asks_for_mark_help(&mark_args) {
            println!("{}", cli::MARK_HELP);
            return ExitCode::SUCCESS;
        }
        return match inputs::control::mark(&mark_args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("dispatch-leaktrace: error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("dispatch-leaktrace: error: {}", cli::one_line_error(&error));
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
