//! `streamq worker`: the consumer runtime (issue: worker runtime and producer).

/// Arguments of `streamq worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {}

pub async fn main(_args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::bail!("`streamq worker` is not implemented yet")
}
