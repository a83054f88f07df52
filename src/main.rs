//! The `streamq` binary: parses the command line, starts logging, and hands
//! each subcommand to the library code that does the work.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    streamq::telemetry::init(cli.log.log_format);
    let runtime = match cli.command.runtime().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("streamq: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamq: {err:#}");
            ExitCode::FAILURE
        }
    }
}
