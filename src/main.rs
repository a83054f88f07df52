//! The `streamq` binary: parses the command line, starts logging, and hands
//! each subcommand to the library code that does the work.

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    streamq::telemetry::init(cli.log.log_format);
    match cli.command.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamq: {err:#}");
            ExitCode::FAILURE
        }
    }
}
