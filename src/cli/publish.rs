//! `streamq publish`: reads one message per line (file or stdin) or a single
//! argument, keeps a few pipelines in flight, and reports how many went in.

use std::{io::IsTerminal, path::PathBuf, time::Instant};

use anyhow::Context;
use futures::stream::{FuturesOrdered, StreamExt};
use streamq::{
    producer::{NewMessage, Producer, ProducerError},
    redis::keys,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Arguments of `streamq publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  streamq publish --stream orders 'hello'\n  \
                        seq 1000 | streamq publish --stream orders -\n  \
                        streamq publish --stream orders --header tenant=acme --file orders.txt")]
pub struct PublishArgs {
    /// Redis URL (redis:// or rediss://), with user and password.
    #[arg(long, env = "STREAMQ_REDIS_URL", hide_env_values = true)]
    pub url: String,
    /// Stream key to publish to.
    #[arg(long, env = "STREAMQ_STREAM")]
    pub stream: String,
    /// A header for every message, as name=value (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Publish one message per line of this file.
    #[arg(long, conflicts_with = "data")]
    pub file: Option<PathBuf>,
    /// Messages per pipeline.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// The single message to publish, or `-` for one message per line of stdin.
    #[arg(value_name = "DATA")]
    pub data: Option<String>,
}

/// Pipelines kept in flight at once: enough to keep Redis busy while the
/// next batch is read and encoded.
const IN_FLIGHT: usize = 4;

pub async fn main(args: PublishArgs) -> anyhow::Result<()> {
    let headers = parse_headers(&args.headers)?;
    let producer = Producer::connect(&args.url, &args.stream).await?;
    let start = Instant::now();
    let published = match (&args.file, args.data.as_deref()) {
        (Some(path), _) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open --file {}", path.display()))?;
            publish_lines(&producer, file, &headers, args.batch as usize).await?
        }
        (None, Some("-")) => publish_lines(&producer, stdin()?, &headers, args.batch as usize).await?,
        (None, None) if !std::io::stdin().is_terminal() => {
            publish_lines(&producer, stdin()?, &headers, args.batch as usize).await?
        }
        (None, None) => anyhow::bail!("nothing to publish: give DATA, --file FILE, or `-` to read lines from stdin"),
        (None, Some(data)) => {
            let id = producer
                .publish(with_headers(data.as_bytes().to_vec(), &headers)?)
                .await?;
            tracing::debug!(id, "published");
            1
        }
    };
    let elapsed = start.elapsed();
    let rate = published as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "published {published} messages to {} in {:.3}s ({rate:.0} msg/s)",
        args.stream,
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Stdin as an async reader (tokio's `io-std` feature is not enabled in
/// this crate; a file over a dup of fd 0 does the same job).
fn stdin() -> anyhow::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot read stdin")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

fn parse_headers(raw: &[String]) -> Result<Vec<(String, Vec<u8>)>, ProducerError> {
    raw.iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.is_empty() && k != keys::DATA_FIELD => Ok((k.to_owned(), v.as_bytes().to_vec())),
            _ => Err(ProducerError::InvalidHeader(h.clone())),
        })
        .collect()
}

fn with_headers(data: Vec<u8>, headers: &[(String, Vec<u8>)]) -> Result<NewMessage, ProducerError> {
    headers.iter().try_fold(NewMessage::new(data), |m, (name, value)| {
        m.header(name.clone(), value.clone())
    })
}

/// Publishes one message per line (without its `\n` or `\r\n`), in
/// pipelines of `batch`, a few in flight. Stops at the first failure and
/// says how many went in before it.
async fn publish_lines(
    producer: &Producer,
    input: impl AsyncRead + Unpin,
    headers: &[(String, Vec<u8>)],
    batch: usize,
) -> anyhow::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut published: u64 = 0;
    let mut in_flight = FuturesOrdered::new();
    let mut eof = false;
    loop {
        while !eof && in_flight.len() < IN_FLIGHT {
            let mut messages = Vec::with_capacity(batch);
            let mut line = Vec::new();
            while messages.len() < batch {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .with_context(|| format!("reading input after {published} messages were published"))?;
                if n == 0 {
                    eof = true;
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                messages.push(with_headers(line.clone(), headers)?);
            }
            if messages.is_empty() {
                break;
            }
            let p = producer.clone();
            in_flight.push_back(async move { p.publish_batch(&messages).await });
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        match result {
            Ok(ids) => published += ids.len() as u64,
            Err(e) => {
                // Earlier batches are counted; let the later ones in flight finish to count them too.
                let mut failed_total = 0usize;
                let mut unknown = 0usize;
                let mut count = |r: &Result<Vec<String>, ProducerError>, published: &mut u64| match r {
                    Ok(ids) => *published += ids.len() as u64,
                    Err(ProducerError::Partial {
                        published: p, failed, ..
                    }) => {
                        *published += *p as u64;
                        failed_total += failed;
                    }
                    Err(ProducerError::Unknown { attempted, .. }) => unknown += attempted,
                    Err(_) => {}
                };
                let first = Err(e);
                count(&first, &mut published);
                while let Some(r) = in_flight.next().await {
                    count(&r, &mut published);
                }
                let Err(e) = first else { unreachable!() };
                let unknown_note = if unknown > 0 {
                    format!(", {unknown} with unknown outcome")
                } else {
                    String::new()
                };
                anyhow::bail!(
                    "publishing failed: {published} messages went in, {failed_total} failed{unknown_note}, \
                     the rest of the input was not sent. First error: {e}"
                );
            }
        }
    }
    Ok(published)
}
