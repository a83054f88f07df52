//! The autoscaling simulator behind `streamq simulate`.
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

use std::path::PathBuf;

use serde::Serialize;

use self::{
    engine::{Outcome, Point},
    scenario::{Scenario, Workload},
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

#[cfg(test)]
mod tests;
