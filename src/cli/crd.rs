//! `streamq crd`: print or write the CustomResourceDefinitions.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// The Markdown field reference instead of YAML (docs/crds.md).
    #[arg(long)]
    pub markdown: bool,
}

pub fn main(args: CrdArgs) -> anyhow::Result<()> {
    streamq::api::crdgen::print_or_write(args.out_dir.as_deref(), args.markdown)?;
    Ok(())
}
