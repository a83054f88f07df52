//! The command line: one file per subcommand, each holding its arguments and
//! turning them into calls of the library. Nothing in the library imports
//! this module; it lives in the binary.

mod crd;
mod publish;
mod run;
mod simulate;
mod worker;

use clap::{Args, Parser, Subcommand};
use streamq::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "streamq",
    version,
    about = "Redis Streams work queues on Kubernetes, autoscaled to a latency target"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging options, accepted by every subcommand.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, env = "STREAMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: reconcile Queues and Consumers.
    Run(run::RunArgs),
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crd(crd::CrdArgs),
    /// Run a command (or POST to a local URL) for each message of a queue.
    Worker(worker::WorkerArgs),
    /// Publish messages to a queue's stream.
    Publish(publish::PublishArgs),
    /// Simulate autoscaling policies on a scenario.
    Simulate(simulate::SimulateArgs),
}

impl Command {
    /// The async runtime the subcommand runs on.
    ///
    /// The operator gets one thread. Its work is many small rounds that each
    /// wait on Redis or the apiserver, well under a core at a thousand
    /// Queues; spread over worker threads, every reply woke another thread
    /// (a futex and a context switch), which cost more CPU than the rounds.
    pub fn runtime(&self) -> tokio::runtime::Builder {
        match self {
            Self::Run(_) => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Run(args) => run::main(args).await,
            Self::Crd(args) => crd::main(args),
            Self::Worker(args) => worker::main(args).await,
            Self::Publish(args) => publish::main(args).await,
            Self::Simulate(args) => simulate::main(args),
        }
    }
}
