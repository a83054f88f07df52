use std::process::ExitCode;

use clap::Parser;
use streamq::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            streamq::telemetry::init(&args.log);
            streamq::operator::run(args).await.map_err(anyhow::Error::from)
        }
        Command::Crd(args) => {
            streamq::api::crdgen::print_or_write(args.out_dir.as_deref(), args.markdown).map_err(Into::into)
        }
        Command::Worker(args) => streamq::worker::main(args).await,
        Command::Publish(args) => streamq::producer::main(args).await,
        Command::Simulate(args) => streamq::simulate::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamq: {err:#}");
            ExitCode::FAILURE
        }
    }
}
