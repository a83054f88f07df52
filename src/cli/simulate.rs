//! `streamq simulate`: reads scenario files, simulates them, and writes the
//! table, JSON, plots and Markdown report asked for.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use streamq::simulate::{
    PolicyChoice, ScenarioRun, SimulateError, Summary, plot, report, scenario::Scenario, simulate,
};

/// Arguments of `streamq simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Scenario file(s) (YAML). Several are simulated one after the other.
    #[arg(long, required = true, num_args = 1..)]
    pub scenario: Vec<PathBuf>,
    /// The policy to simulate.
    #[arg(long, value_enum, default_value_t = PolicyChoice::All)]
    pub policy: PolicyChoice,
    /// KEDA's `lagCount`: the lag per replica the HPA aims at (policy `keda`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub keda_lag_target: u64,
    /// Write the results as JSON to this file, or to stdout with `-` (then no table is printed).
    #[arg(long, value_name = "OUT|-")]
    pub json: Option<String>,
    /// Write a PNG of arrival rate, backlog and replicas over time (one scenario only).
    #[arg(long, value_name = "OUT.png")]
    pub plot: Option<PathBuf>,
    /// Write a Markdown report of every scenario, with a PNG per scenario in `--plot-dir`.
    #[arg(long, value_name = "OUT.md", requires = "plot_dir")]
    pub markdown: Option<PathBuf>,
    /// Where `--markdown` puts its plots (linked relative to the Markdown file).
    #[arg(long, value_name = "DIR", requires = "markdown")]
    pub plot_dir: Option<PathBuf>,
    /// Print each of streamq's decisions that changes replicas, with its reason, to stderr.
    #[arg(long)]
    pub trace: bool,
}

pub fn main(args: SimulateArgs) -> anyhow::Result<()> {
    if args.plot.is_some() && args.scenario.len() != 1 {
        return Err(SimulateError::PlotNeedsOneScenario(args.scenario.len()).into());
    }
    let scenarios = args
        .scenario
        .iter()
        .map(|path| Scenario::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, s) in scenarios.iter().enumerate() {
        if scenarios[..i].iter().any(|other| other.name == s.name) {
            return Err(SimulateError::DuplicateName(s.name.clone()).into());
        }
    }
    let results: Vec<ScenarioRun> = scenarios
        .iter()
        .map(|s| simulate(s, args.policy, args.keda_lag_target, args.trace))
        .collect();

    let summaries: Vec<&Summary> = results.iter().flat_map(|r| r.runs.iter().map(|p| &p.summary)).collect();
    let to_stdout = args.json.as_deref() == Some("-");
    if let Some(out) = &args.json {
        let mut json = serde_json::to_string_pretty(&summaries)?;
        json.push('\n');
        if to_stdout {
            std::io::stdout().write_all(json.as_bytes())?;
        } else {
            write_file(Path::new(out), json.as_bytes())?;
        }
    }
    if !to_stdout {
        for result in &results {
            print!("{}", report::text_table(result));
        }
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &results[0])?;
    }
    if let (Some(markdown), Some(plot_dir)) = (&args.markdown, &args.plot_dir) {
        std::fs::create_dir_all(plot_dir).map_err(|source| SimulateError::Write {
            path: plot_dir.clone(),
            source,
        })?;
        for result in &results {
            plot::draw(&plot_dir.join(format!("{}.png", result.scenario.name)), result)?;
        }
        let base = markdown.parent().unwrap_or(Path::new(""));
        let link_dir = plot_dir.strip_prefix(base).unwrap_or(plot_dir);
        write_file(markdown, report::markdown(&results, link_dir).as_bytes())?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SimulateError> {
    std::fs::write(path, bytes).map_err(|source| SimulateError::Write {
        path: path.to_owned(),
        source,
    })
}
