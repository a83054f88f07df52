//! `streamq simulate`: the autoscaling simulator (issue: autoscaling evaluation).

/// Arguments of `streamq simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

pub fn main(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`streamq simulate` is not implemented yet")
}
