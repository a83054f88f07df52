//! The human-readable outputs: a text table per scenario and the Markdown report.

use std::{fmt::Write, path::Path};

use super::{KEDA_BEST_MIN_WITHIN_SLO_PCT, PolicyRun, ScenarioRun, scenario::Scenario};

/// The SLO attainment streamq must keep in every feasible scenario.
pub const GOAL_WITHIN_SLO_PCT: f64 = 99.0;
/// The median streamq ÷ keda-best replica-seconds ratio aimed at.
pub const GOAL_MEDIAN_RATIO: f64 = 0.85;

fn param(run: &PolicyRun) -> String {
    run.summary.param.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

fn drain(run: &PolicyRun) -> String {
    match run.drain_s {
        Some(s) => format!("{s:.0}s"),
        None => "not drained".to_owned(),
    }
}

/// A one-line description of the scenario.
pub fn describe(s: &Scenario) -> String {
    let peak = s.arrivals.iter().map(|p| p.rate).fold(0.0, f64::max);
    let mut processing = format!("{:?} mean {}", s.processing.distribution, s.processing.mean).to_lowercase();
    if let Some(sigma) = s.processing.sigma {
        let _ = write!(processing, " sigma {sigma}");
    }
    for change in &s.processing.changes {
        let _ = write!(processing, ", {} from {}", change.mean, change.at);
    }
    let c = s.consumer;
    format!(
        "{} simulated, ~{:.0} messages, peak {peak}/s; processing {processing}; pod start-up {}; \
         replicas {}..{} (start {}), concurrency {}; target {}",
        s.duration,
        s.expected_messages(),
        s.pod_startup,
        c.min_replicas,
        c.max_replicas,
        c.initial_replicas,
        c.concurrency,
        s.slo.target_latency
    )
}

fn feasibility(s: &Scenario) -> String {
    match s.overload_end() {
        None => "feasible".to_owned(),
        Some(end) => format!(
            "infeasible: demand exceeds max_replicas × concurrency until {end:.0}s; drain time is measured from then"
        ),
    }
}

pub fn text_table(result: &ScenarioRun) -> String {
    let s = &result.scenario;
    let infeasible = s.overload_end().is_some();
    let mut out = String::new();
    let _ = writeln!(out, "scenario {} ({})", s.name, feasibility(s));
    let _ = writeln!(out, "  {}", describe(s));
    let _ = writeln!(
        out,
        "  {:<10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12} {:>6} {:>8} {:>6}{}",
        "policy",
        "param",
        "messages",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "in SLO %",
        "late s",
        "replica-s",
        "scales",
        "backlog",
        "intr",
        if infeasible { "  drain" } else { "" }
    );
    for run in &result.runs {
        let m = &run.summary;
        let _ = writeln!(
            out,
            "  {:<10} {:>6} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.1} {:>12.0} {:>6} {:>8} {:>6}{}",
            m.policy,
            param(run),
            m.measures.messages,
            m.measures.wait_p50_s,
            m.measures.wait_p95_s,
            m.measures.wait_p99_s,
            m.measures.wait_max_s,
            m.measures.within_slo_pct,
            m.measures.slo_violation_s,
            m.measures.replica_seconds,
            m.measures.scale_events,
            m.measures.max_backlog,
            m.measures.interrupted,
            if infeasible {
                format!("  {}", drain(run))
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "  (simulated in {:.2}s)", result.wall_s);
    out
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The Markdown report: a summary with the goals, then one section per scenario with its table
/// and plot (`plot_link_dir` is where the PNGs are, relative to the report).
pub fn markdown(results: &[ScenarioRun], plot_link_dir: &Path) -> String {
    let mut out = String::new();
    let policies: Vec<String> = results
        .first()
        .map(|r| r.runs.iter().map(|p| p.summary.policy.clone()).collect())
        .unwrap_or_default();

    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "Within-SLO % (share of messages whose wait from enqueue to processing start is within the \
         target) and replica-seconds (pod-seconds, starting pods included). `ratio` is streamq's \
         replica-seconds ÷ keda-best's; `floor` is the messages' handler time ÷ concurrency, the \
         replica-seconds no policy can go below.\n"
    );
    let mut header = "| scenario |".to_owned();
    let mut rule = "|---|".to_owned();
    for p in &policies {
        let _ = write!(header, " {p} in SLO % | {p} replica-s |");
        rule.push_str("---:|---:|");
    }
    header.push_str(" ratio | floor |");
    rule.push_str("---:|---:|");
    let _ = writeln!(out, "{header}\n{rule}");
    let mut ratios = Vec::new();
    let mut feasible_ratios = Vec::new();
    let mut floors = Vec::new();
    let mut streamq_missed = Vec::new();
    let mut costlier = Vec::new();
    let mut interrupted = 0;
    for r in results {
        let infeasible = r.scenario.overload_end().is_some();
        let mut row = format!(
            "| [{}](#{}){} |",
            r.scenario.name,
            r.scenario.name.to_lowercase(),
            if infeasible { " (infeasible)" } else { "" }
        );
        for p in &policies {
            match r.get(p) {
                Some(run) => {
                    let label = match run.summary.param {
                        Some(param) if p == "keda-best" => format!(" (lagCount {param})"),
                        _ => String::new(),
                    };
                    let _ = write!(
                        row,
                        " {:.2} | {:.0}{label} |",
                        run.summary.measures.within_slo_pct, run.summary.measures.replica_seconds
                    );
                }
                None => row.push_str(" - | - |"),
            }
        }
        let (sq, kb) = (r.get("streamq"), r.get("keda-best"));
        let ratio = match (sq, kb) {
            (Some(sq), Some(kb)) if kb.summary.measures.replica_seconds > 0.0 => {
                Some(sq.summary.measures.replica_seconds / kb.summary.measures.replica_seconds)
            }
            _ => None,
        };
        // The floor: handler time ÷ concurrency (the same work in every run; the first's is taken).
        let floor = r.runs.first().map(|run| run.busy_replica_seconds);
        let _ = writeln!(
            row,
            " {} | {} |",
            ratio.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}")),
            floor.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
        );
        out.push_str(&row);
        if let Some(sq) = sq {
            interrupted += sq.summary.measures.interrupted;
            if !infeasible && sq.summary.measures.within_slo_pct < GOAL_WITHIN_SLO_PCT {
                streamq_missed.push(format!(
                    "{} ({:.2} %)",
                    r.scenario.name, sq.summary.measures.within_slo_pct
                ));
            }
            if let Some(ratio) = ratio
                && !infeasible
            {
                feasible_ratios.push(ratio);
            }
            if let (Some(kb), Some(ratio)) = (kb, ratio)
                && !infeasible
                && sq.summary.measures.within_slo_pct >= GOAL_WITHIN_SLO_PCT
                && kb.summary.measures.within_slo_pct >= KEDA_BEST_MIN_WITHIN_SLO_PCT
            {
                ratios.push(ratio);
                floors.push(sq.busy_replica_seconds / kb.summary.measures.replica_seconds);
                if ratio > 1.0 {
                    costlier.push(format!("{} ({ratio:.2})", r.scenario.name));
                }
            }
        }
    }

    if policies.iter().any(|p| p == "streamq") && policies.iter().any(|p| p == "keda-best") {
        let _ = writeln!(out, "\n### Goals\n");
        let _ = writeln!(
            out,
            "- streamq keeps ≥ {GOAL_WITHIN_SLO_PCT} % within SLO in every feasible scenario: {}",
            if streamq_missed.is_empty() {
                "**met**.".to_owned()
            } else {
                format!("**missed** in {}.", streamq_missed.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "- streamq's replica-seconds ≤ keda-best's wherever both meet the SLO ({} scenarios): {}",
            ratios.len(),
            if costlier.is_empty() {
                "**met**.".to_owned()
            } else {
                format!("**missed** in {}.", costlier.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "- median ratio ≤ {GOAL_MEDIAN_RATIO} over those {} scenarios: {}",
            ratios.len(),
            match median(ratios.clone()) {
                Some(m) if m <= GOAL_MEDIAN_RATIO => format!("**met** ({m:.2})."),
                Some(m) => format!(
                    "**missed** ({m:.2}). No policy can use fewer replica-seconds than the messages' \
                     handler time ÷ concurrency; in these scenarios that floor alone is a median {:.2} \
                     of keda-best's.",
                    median(floors.clone()).unwrap_or(f64::NAN)
                ),
                None => "no scenario where both meet the SLO.".to_owned(),
            }
        );
        // The goal's wording admits a second reading: the median over the whole feasible
        // suite, keda-best taken at its best attainment where no lagCount reaches 99 %.
        // Both are printed so that neither reading is hidden.
        let _ = writeln!(
            out,
            "- the same median over every feasible scenario ({}), keda-best at its best attainment \
             where it misses the SLO: {}",
            feasible_ratios.len(),
            median(feasible_ratios.clone()).map_or_else(|| "-".to_owned(), |m| format!("{m:.2}"))
        );
        let _ = writeln!(
            out,
            "- 0 interrupted messages with streamq: {}",
            if interrupted == 0 {
                "**met**.".to_owned()
            } else {
                format!("**missed** ({interrupted}).")
            }
        );
    }

    for r in results {
        let s = &r.scenario;
        let infeasible = s.overload_end().is_some();
        let _ = writeln!(out, "\n## {}\n", s.name);
        let _ = writeln!(out, "{}. {}.\n", describe(s), feasibility(s));
        let _ = writeln!(
            out,
            "| policy | param | messages | wait p50 s | p95 s | p99 s | max s | within SLO % | SLO violation s | replica-s | scale events | max backlog | interrupted |{}",
            if infeasible { " drain |" } else { "" }
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
            if infeasible { "---:|" } else { "" }
        );
        for run in &r.runs {
            let m = &run.summary;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {} | {} | {} |{}",
                m.policy,
                param(run),
                m.measures.messages,
                m.measures.wait_p50_s,
                m.measures.wait_p95_s,
                m.measures.wait_p99_s,
                m.measures.wait_max_s,
                m.measures.within_slo_pct,
                m.measures.slo_violation_s,
                m.measures.replica_seconds,
                m.measures.scale_events,
                m.measures.max_backlog,
                m.measures.interrupted,
                if infeasible {
                    format!(" {} |", drain(run))
                } else {
                    String::new()
                }
            );
        }
        let link = plot_link_dir.join(format!("{}.png", s.name));
        let _ = writeln!(out, "\n![{}]({})", s.name, link.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
