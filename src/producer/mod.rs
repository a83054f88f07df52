//! `streamq publish`: the producer (issue: worker runtime and producer).

/// Arguments of `streamq publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {}

pub async fn main(_args: PublishArgs) -> anyhow::Result<()> {
    anyhow::bail!("`streamq publish` is not implemented yet")
}
