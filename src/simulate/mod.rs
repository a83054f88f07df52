//! The autoscaling simulator behind `streamq simulate`.
//!
//! Runs a scenario (traffic, processing times, pod start-up, bounds; see [`scenario`]) against
//! streamq's autoscaler and against models of KEDA and of the WorkerPodAutoscaler
//! ([`policies`]), on identical arrivals and service times, and reports waits, SLO attainment
//! and cost (replica-seconds).

pub mod engine;
pub mod measures;
pub mod plot;
pub mod policies;
pub mod report;
pub mod scenario;

use std::path::PathBuf;

use serde::Serialize;

pub use self::measures::{Measures, Meter};
use self::{
    engine::{Point, SimulatedRun},
    scenario::{Scenario, Traffic},
};

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
    /// Rounded ([`Measures::rounded`]).
    #[serde(flatten)]
    pub measures: Measures,
}

/// One policy's run: the summary, plus what the table and plot need.
#[derive(Clone, Debug)]
pub struct PolicyRun {
    pub summary: Summary,
    pub drain_s: Option<f64>,
    /// See [`SimulatedRun::busy_replica_seconds`].
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

fn policy_run(scenario: &Scenario, policy: &str, param: Option<u64>, run: SimulatedRun) -> PolicyRun {
    PolicyRun {
        summary: Summary {
            scenario: scenario.name.clone(),
            policy: policy.to_owned(),
            param,
            measures: run.measures.rounded(),
        },
        drain_s: run.drain_s,
        busy_replica_seconds: run.busy_replica_seconds,
        series: run.series,
    }
}

pub fn run_streamq(scenario: &Scenario, traffic: &Traffic, trace: bool) -> PolicyRun {
    let run = engine::run(scenario, traffic, &mut policies::Streamq::new(scenario, trace));
    policy_run(scenario, "streamq", None, run)
}

pub fn run_keda(scenario: &Scenario, traffic: &Traffic, lag_target: u64, name: &str) -> PolicyRun {
    let run = engine::run(scenario, traffic, &mut policies::Keda::new(scenario, lag_target));
    policy_run(scenario, name, Some(lag_target), run)
}

/// KEDA at its best lagCount for this scenario: the cheapest of the sweep that keeps 99 % of
/// messages within the target, or, when none does, the one that keeps the most.
pub fn run_keda_best(scenario: &Scenario, traffic: &Traffic) -> PolicyRun {
    let mut runs: Vec<PolicyRun> = KEDA_SWEEP
        .iter()
        .map(|&target| run_keda(scenario, traffic, target, "keda-best"))
        .collect();
    let best = pick_best(&runs);
    runs.swap_remove(best)
}

/// The index of keda-best's choice among the sweep's runs (see [`run_keda_best`]).
fn pick_best(runs: &[PolicyRun]) -> usize {
    let meets = |r: &PolicyRun| r.summary.measures.within_slo_pct >= KEDA_BEST_MIN_WITHIN_SLO_PCT;
    let best = if runs.iter().any(meets) {
        runs.iter()
            .enumerate()
            .filter(|(_, r)| meets(r))
            .min_by(|(_, a), (_, b)| {
                a.summary
                    .measures
                    .replica_seconds
                    .total_cmp(&b.summary.measures.replica_seconds)
            })
            .map(|(i, _)| i)
    } else {
        // Ties keep the first (smallest) target: max_by alone would keep the last.
        runs.iter()
            .enumerate()
            .rev()
            .max_by(|(_, a), (_, b)| {
                a.summary
                    .measures
                    .within_slo_pct
                    .total_cmp(&b.summary.measures.within_slo_pct)
            })
            .map(|(i, _)| i)
    };
    best.unwrap_or(0)
}

pub fn run_wpa(scenario: &Scenario, traffic: &Traffic) -> PolicyRun {
    let run = engine::run(scenario, traffic, &mut policies::Wpa::new(scenario));
    policy_run(scenario, "wpa", None, run)
}

/// Simulates `choice` on `scenario`.
pub fn simulate(scenario: &Scenario, choice: PolicyChoice, keda_lag_target: u64, trace: bool) -> ScenarioRun {
    let started = std::time::Instant::now();
    let traffic = scenario.traffic();
    let mut runs = Vec::new();
    if matches!(choice, PolicyChoice::Streamq | PolicyChoice::All) {
        runs.push(run_streamq(scenario, &traffic, trace));
    }
    if matches!(choice, PolicyChoice::Keda | PolicyChoice::All) {
        runs.push(run_keda(scenario, &traffic, keda_lag_target, "keda"));
    }
    if matches!(choice, PolicyChoice::KedaBest | PolicyChoice::All) {
        runs.push(run_keda_best(scenario, &traffic));
    }
    if matches!(choice, PolicyChoice::Wpa | PolicyChoice::All) {
        runs.push(run_wpa(scenario, &traffic));
    }
    ScenarioRun {
        scenario: scenario.clone(),
        runs,
        wall_s: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests;
