//! Why a decision was made, as a value; `Display` renders the text the operator writes to
//! status.lastScaleReason and to Events. Users and tests read that text: change it only on
//! purpose.

use std::{fmt, time::Duration};

use super::{LagSource, ProcessingTimeSource};

/// Why the autoscaler decided what it did.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// The sampler failed; `since` is the time since the last sample (`None`: there was none).
    NoData { since: Option<Duration>, holding: u32 },
    /// The sample is not newer than the previous one.
    NotNewer { lag: Option<u64>, holding: u32 },
    /// A fresh sample was sized and `rule` chose `replicas`.
    Decided {
        basis: Basis,
        replicas: u32,
        rule: Rule,
        /// The gap before this sample, when it was longer than [`super::STALE_AFTER`].
        after_gap: Option<Duration>,
    },
}

impl Reason {
    /// The rule that chose, when a fresh sample was decided on.
    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Reason::Decided { rule, .. } => Some(rule),
            Reason::NoData { .. } | Reason::NotNewer { .. } => None,
        }
    }
}

/// The numbers a decision was made from.
#[derive(Clone, Debug, PartialEq)]
pub struct Basis {
    pub lag: Option<u64>,
    pub lag_source: LagSource,
    pub pending: u64,
    pub arrival_rate: Option<f64>,
    pub processing_time: Duration,
    pub processing_time_source: ProcessingTimeSource,
    pub target_latency: Duration,
}

/// The rule that chose the replicas, one variant per outcome, with the numbers it reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// At zero, with messages to serve (or `min_replicas` above zero).
    WakeFromZero,
    /// At zero with nothing to serve.
    StayAtZero,
    ScaleToZero {
        idle_for: Duration,
    },
    ScaleUp {
        from: u32,
    },
    Steady,
    /// Lower demand, but with no lag and no entries-read the backlog could be anything.
    BacklogUnknown {
        current: u32,
    },
    /// Lower demand, but fresh samples cover less than the scale-down delay.
    WindowFilling {
        current: u32,
        fresh_for: Duration,
        delay: Duration,
    },
    /// Lower demand in the first sample, or the first after a gap.
    FirstAfterGap {
        current: u32,
    },
    /// Some sample within the scale-down delay still asked for `current` or more.
    DemandInWindow {
        current: u32,
        demand: u32,
        delay: Duration,
    },
    /// As many consumers hold pending messages as there are replicas.
    ConsumersHoldPending {
        current: u32,
        consumers: u32,
    },
    /// The scale-down to `down_to` would be too small to be worth it.
    WithinDeadband {
        current: u32,
        down_to: u32,
    },
    ScaleDown {
        from: u32,
        delay: Duration,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoData {
                since: Some(since),
                holding,
            } => {
                write!(f, "no data from Redis since {}; holding {holding}", Spec(*since))
            }
            Reason::NoData { since: None, holding } => write!(f, "no data from Redis yet; holding {holding}"),
            Reason::NotNewer { lag, holding } => write!(
                f,
                "sample not newer than the previous one (lag {}); holding {holding}",
                Count(*lag)
            ),
            Reason::Decided {
                basis,
                replicas,
                rule,
                after_gap,
            } => {
                write!(f, "{basis} → {replicas} ({rule})")?;
                match after_gap {
                    Some(gap) => write!(f, " [{} since the previous sample]", Spec(*gap)),
                    None => Ok(()),
                }
            }
        }
    }
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lag_note = match self.lag_source {
            LagSource::Exact => "",
            LagSource::Estimated => " (estimated: Redis reports no lag)",
            LagSource::Unknown => " (Redis reports no lag and no entries-read)",
        };
        let source = match self.processing_time_source {
            ProcessingTimeSource::WorkerStats => "measured by workers",
            ProcessingTimeSource::Redis => "measured from Redis",
            ProcessingTimeSource::Hint => "hint",
            ProcessingTimeSource::Default => "assumed",
        };
        write!(
            f,
            "lag {}{lag_note}, pending {}, arrival {}/s, processing {} ({source}), target {}",
            Count(self.lag),
            self.pending,
            Rate(self.arrival_rate),
            Spec(self.processing_time),
            Spec(self.target_latency),
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::WakeFromZero => f.write_str("scale up from zero"),
            Rule::StayAtZero => f.write_str("idle, staying at zero"),
            Rule::ScaleToZero { idle_for } => write!(f, "idle for {}: scale to zero", Spec(*idle_for)),
            Rule::ScaleUp { from } => write!(f, "scale up from {from}"),
            Rule::Steady => f.write_str("steady"),
            Rule::BacklogUnknown { current } => write!(f, "backlog unknown: not scaling down below {current}"),
            Rule::WindowFilling {
                current,
                fresh_for,
                delay,
            } => write!(
                f,
                "holding {current}: fresh samples for {} only, scale-down waits {}",
                Spec(*fresh_for),
                Spec(*delay)
            ),
            Rule::FirstAfterGap { current } => {
                write!(f, "holding {current}: first sample after a gap, not scaling down")
            }
            Rule::DemandInWindow { current, demand, delay } => {
                write!(
                    f,
                    "holding {current}: demand was {demand} within the last {}",
                    Spec(*delay)
                )
            }
            Rule::ConsumersHoldPending { current, consumers } => {
                write!(f, "holding {current}: {consumers} consumers hold pending messages")
            }
            Rule::WithinDeadband { current, down_to } => {
                write!(f, "holding {current}: {down_to} is within the deadband")
            }
            Rule::ScaleDown { from, delay } => {
                write!(f, "scale down from {from} after {} of lower demand", Spec(*delay))
            }
        }
    }
}

/// A duration the way specs write it (`api::Duration`), to the millisecond: plenty for a reason.
struct Spec(Duration);

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        crate::api::Duration::from_millis(millis).fmt(f)
    }
}

/// A rate: whole numbers from 10/s, one decimal below.
struct Rate(Option<f64>);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) if r >= 10.0 => write!(f, "{r:.0}"),
            Some(r) => write!(f, "{r:.1}"),
            None => f.write_str("?"),
        }
    }
}

struct Count(Option<u64>);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn basis(lag_source: LagSource, processing_time_source: ProcessingTimeSource) -> Basis {
        Basis {
            lag: (lag_source != LagSource::Unknown).then_some(120),
            lag_source,
            pending: 4,
            arrival_rate: Some(12.5),
            processing_time: Duration::from_millis(250),
            processing_time_source,
            target_latency: secs(30),
        }
    }

    /// The texts users, Events and the integration tests read.
    #[test]
    fn every_reason_renders_its_text() {
        let decided = |rule: Rule, replicas: u32| Reason::Decided {
            basis: basis(LagSource::Exact, ProcessingTimeSource::WorkerStats),
            replicas,
            rule,
            after_gap: None,
        };
        let numbers = "lag 120, pending 4, arrival 12/s, processing 250ms (measured by workers), target 30s";
        let cases = [
            (decided(Rule::WakeFromZero, 3), "→ 3 (scale up from zero)"),
            (decided(Rule::StayAtZero, 0), "→ 0 (idle, staying at zero)"),
            (
                decided(Rule::ScaleToZero { idle_for: secs(90) }, 0),
                "→ 0 (idle for 90s: scale to zero)",
            ),
            (decided(Rule::ScaleUp { from: 2 }, 7), "→ 7 (scale up from 2)"),
            (decided(Rule::Steady, 7), "→ 7 (steady)"),
            (
                decided(Rule::BacklogUnknown { current: 7 }, 7),
                "→ 7 (backlog unknown: not scaling down below 7)",
            ),
            (
                decided(
                    Rule::WindowFilling {
                        current: 7,
                        fresh_for: Duration::from_millis(12_500),
                        delay: secs(60),
                    },
                    7,
                ),
                "→ 7 (holding 7: fresh samples for 12500ms only, scale-down waits 1m)",
            ),
            (
                decided(Rule::FirstAfterGap { current: 7 }, 7),
                "→ 7 (holding 7: first sample after a gap, not scaling down)",
            ),
            (
                decided(
                    Rule::DemandInWindow {
                        current: 7,
                        demand: 9,
                        delay: secs(300),
                    },
                    7,
                ),
                "→ 7 (holding 7: demand was 9 within the last 5m)",
            ),
            (
                decided(
                    Rule::ConsumersHoldPending {
                        current: 7,
                        consumers: 7,
                    },
                    7,
                ),
                "→ 7 (holding 7: 7 consumers hold pending messages)",
            ),
            (
                decided(Rule::WithinDeadband { current: 7, down_to: 6 }, 7),
                "→ 7 (holding 7: 6 is within the deadband)",
            ),
            (
                decided(
                    Rule::ScaleDown {
                        from: 7,
                        delay: secs(60),
                    },
                    4,
                ),
                "→ 4 (scale down from 7 after 1m of lower demand)",
            ),
        ];
        for (reason, end) in cases {
            assert_eq!(reason.to_string(), format!("{numbers} {end}"));
        }
    }

    #[test]
    fn the_numbers_say_where_they_come_from() {
        let text = |lag_source, processing_time_source, arrival_rate| {
            Basis {
                arrival_rate,
                ..basis(lag_source, processing_time_source)
            }
            .to_string()
        };
        assert_eq!(
            text(LagSource::Estimated, ProcessingTimeSource::Redis, Some(0.25)),
            "lag 120 (estimated: Redis reports no lag), pending 4, arrival 0.2/s, processing 250ms (measured from Redis), target 30s"
        );
        assert_eq!(
            text(LagSource::Unknown, ProcessingTimeSource::Hint, None),
            "lag ? (Redis reports no lag and no entries-read), pending 4, arrival ?/s, processing 250ms (hint), target 30s"
        );
        assert_eq!(
            text(LagSource::Exact, ProcessingTimeSource::Default, Some(9.96)),
            "lag 120, pending 4, arrival 10.0/s, processing 250ms (assumed), target 30s"
        );
    }

    #[test]
    fn holds_and_gaps_render_their_text() {
        let cases = [
            (
                Reason::NoData {
                    since: Some(secs(301)),
                    holding: 20,
                },
                "no data from Redis since 301s; holding 20",
            ),
            (
                Reason::NoData {
                    since: None,
                    holding: 1,
                },
                "no data from Redis yet; holding 1",
            ),
            (
                Reason::NotNewer {
                    lag: Some(5),
                    holding: 3,
                },
                "sample not newer than the previous one (lag 5); holding 3",
            ),
            (
                Reason::NotNewer { lag: None, holding: 3 },
                "sample not newer than the previous one (lag ?); holding 3",
            ),
            (
                Reason::Decided {
                    basis: basis(LagSource::Exact, ProcessingTimeSource::WorkerStats),
                    replicas: 20,
                    rule: Rule::FirstAfterGap { current: 20 },
                    after_gap: Some(secs(601)),
                },
                "lag 120, pending 4, arrival 12/s, processing 250ms (measured by workers), target 30s → 20 \
                 (holding 20: first sample after a gap, not scaling down) [601s since the previous sample]",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }
}
