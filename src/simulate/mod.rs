//! `streamq simulate`: the autoscaling simulator (issue: autoscaling evaluation).
//!
//! Runs a scenario (traffic, processing times, pod start-up, bounds; see [`scenario`]) against
//! streamq's autoscaler and against models of KEDA and of the WorkerPodAutoscaler
//! ([`policies`]), on identical arrivals and service times, and reports waits, SLO attainment
//! and cost (replica-seconds).

pub mod engine;
pub mod plot;
pub mod policies;
pub mod report;
pub mod scenario;

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

use self::{
    engine::{Outcome, Point},
    scenario::{Scenario, Workload},
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyChoice {
    Streamq,
    Keda,
    KedaBest,
    Wpa,
    All,
}

/// The lagCount targets `keda-best` tries.
pub const KEDA_SWEEP: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
/// The SLO attainment `keda-best` requires before it looks at cost.
pub const KEDA_BEST_MIN_WITHIN_SLO_PCT: f64 = 99.0;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("cannot read scenario {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid scenario {path}: {why}")]
    Scenario { path: PathBuf, why: String },
    #[error("--plot draws one scenario; {0} were given (use --markdown with --plot-dir for several)")]
    PlotNeedsOneScenario(usize),
    #[error("two scenarios are both named {0:?}; names must differ (they name the plots)")]
    DuplicateName(String),
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot draw {path}: {why}")]
    Plot { path: PathBuf, why: String },
}

/// One policy's result on one scenario: the JSON object, exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub policy: String,
    /// The KEDA lagCount target (keda, keda-best); null otherwise.
    pub param: Option<u64>,
    pub messages: u64,
    pub wait_p50_s: f64,
    pub wait_p95_s: f64,
    pub wait_p99_s: f64,
    pub wait_max_s: f64,
    pub within_slo_pct: f64,
    pub slo_violation_s: f64,
    pub replica_seconds: f64,
    pub scale_events: u64,
    pub max_backlog: u64,
    pub interrupted: u64,
}

/// One policy's run: the summary, plus what the table and plot need.
#[derive(Clone, Debug)]
pub struct PolicyRun {
    pub summary: Summary,
    pub drain_s: Option<f64>,
    /// See [`Outcome::busy_replica_seconds`].
    pub busy_replica_seconds: f64,
    pub series: Vec<Point>,
}

/// All policies on one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub runs: Vec<PolicyRun>,
    /// Wall-clock seconds the simulation took (all policies).
    pub wall_s: f64,
}

impl ScenarioRun {
    pub fn get(&self, policy: &str) -> Option<&PolicyRun> {
        self.runs.iter().find(|r| r.summary.policy == policy)
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn policy_run(scenario: &Scenario, policy: &str, param: Option<u64>, outcome: Outcome) -> PolicyRun {
    PolicyRun {
        summary: Summary {
            scenario: scenario.name.clone(),
            policy: policy.to_owned(),
            param,
            messages: outcome.messages,
            wait_p50_s: round(outcome.wait_p50_s, 3),
            wait_p95_s: round(outcome.wait_p95_s, 3),
            wait_p99_s: round(outcome.wait_p99_s, 3),
            wait_max_s: round(outcome.wait_max_s, 3),
            within_slo_pct: round(outcome.within_slo_pct, 3),
            slo_violation_s: round(outcome.slo_violation_s, 3),
            replica_seconds: round(outcome.replica_seconds, 1),
            scale_events: outcome.scale_events,
            max_backlog: outcome.max_backlog,
            interrupted: outcome.interrupted,
        },
        drain_s: outcome.drain_s,
        busy_replica_seconds: outcome.busy_replica_seconds,
        series: outcome.series,
    }
}

pub fn run_streamq(scenario: &Scenario, workload: &Workload, trace: bool) -> PolicyRun {
    let outcome = engine::run(scenario, workload, &mut policies::Streamq::new(scenario, trace));
    policy_run(scenario, "streamq", None, outcome)
}

pub fn run_keda(scenario: &Scenario, workload: &Workload, lag_target: u64, name: &str) -> PolicyRun {
    let outcome = engine::run(scenario, workload, &mut policies::Keda::new(scenario, lag_target));
    policy_run(scenario, name, Some(lag_target), outcome)
}

/// KEDA at its best lagCount for this scenario: the cheapest of the sweep that keeps 99 % of
/// messages within the target, or, when none does, the one that keeps the most.
pub fn run_keda_best(scenario: &Scenario, workload: &Workload) -> PolicyRun {
    let mut runs: Vec<PolicyRun> = KEDA_SWEEP
        .iter()
        .map(|&target| run_keda(scenario, workload, target, "keda-best"))
        .collect();
    let best = pick_best(&runs);
    runs.swap_remove(best)
}

/// The index of keda-best's choice among the sweep's runs (see [`run_keda_best`]).
fn pick_best(runs: &[PolicyRun]) -> usize {
    let meets = |r: &PolicyRun| r.summary.within_slo_pct >= KEDA_BEST_MIN_WITHIN_SLO_PCT;
    let best = if runs.iter().any(meets) {
        runs.iter()
            .enumerate()
            .filter(|(_, r)| meets(r))
            .min_by(|(_, a), (_, b)| a.summary.replica_seconds.total_cmp(&b.summary.replica_seconds))
            .map(|(i, _)| i)
    } else {
        // Ties keep the first (smallest) target: max_by alone would keep the last.
        runs.iter()
            .enumerate()
            .rev()
            .max_by(|(_, a), (_, b)| a.summary.within_slo_pct.total_cmp(&b.summary.within_slo_pct))
            .map(|(i, _)| i)
    };
    best.unwrap_or(0)
}

pub fn run_wpa(scenario: &Scenario, workload: &Workload) -> PolicyRun {
    let outcome = engine::run(scenario, workload, &mut policies::Wpa::new(scenario));
    policy_run(scenario, "wpa", None, outcome)
}

/// Simulates `choice` on `scenario`.
pub fn simulate(scenario: &Scenario, choice: PolicyChoice, keda_lag_target: u64, trace: bool) -> ScenarioRun {
    let started = std::time::Instant::now();
    let workload = scenario.workload();
    let mut runs = Vec::new();
    if matches!(choice, PolicyChoice::Streamq | PolicyChoice::All) {
        runs.push(run_streamq(scenario, &workload, trace));
    }
    if matches!(choice, PolicyChoice::Keda | PolicyChoice::All) {
        runs.push(run_keda(scenario, &workload, keda_lag_target, "keda"));
    }
    if matches!(choice, PolicyChoice::KedaBest | PolicyChoice::All) {
        runs.push(run_keda_best(scenario, &workload));
    }
    if matches!(choice, PolicyChoice::Wpa | PolicyChoice::All) {
        runs.push(run_wpa(scenario, &workload));
    }
    ScenarioRun {
        scenario: scenario.clone(),
        runs,
        wall_s: started.elapsed().as_secs_f64(),
    }
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

#[cfg(test)]
mod tests;
