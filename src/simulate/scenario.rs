//! Scenario files: what traffic arrives, how long messages take, how the consumer is bounded.
//! The format is strict (unknown keys are errors) because a typo silently ignored would
//! simulate something else than what the user wrote.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Exp1, StandardNormal};
use serde::Deserialize;

use super::SimulateError;
use crate::api::Duration;

/// Most messages one scenario may generate: beyond this the arrays of arrival times and service
/// draws would take gigabytes.
pub const MAX_MESSAGES: f64 = 50_000_000.0;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Simulated time.
    pub duration: Duration,
    /// Same seed, same result.
    pub seed: u64,
    /// Messages per second, piecewise linear; two points at the same time make a step.
    pub arrivals: Vec<RatePoint>,
    pub processing: Processing,
    /// From replicas raised to the pod consuming.
    pub pod_startup: Duration,
    pub consumer: ConsumerBounds,
    pub slo: Slo,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePoint {
    pub at: Duration,
    pub rate: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Processing {
    pub distribution: Distribution,
    pub mean: Duration,
    /// Standard deviation of the underlying normal; lognormal only.
    #[serde(default)]
    pub sigma: Option<f64>,
    /// The mean changes at a time.
    #[serde(default)]
    pub changes: Vec<MeanChange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Constant,
    Exponential,
    Lognormal,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanChange {
    pub at: Duration,
    pub mean: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerBounds {
    #[serde(default = "one")]
    pub concurrency: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub initial_replicas: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Wait from enqueue to processing start.
    pub target_latency: Duration,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, SimulateError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|why| SimulateError::Scenario {
            path: path.to_owned(),
            why,
        })
    }

    /// Parses and validates a scenario; the error says what is wrong, in words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "name {:?} may contain only letters, digits, '-', '_' and '.' (it names the plot file)",
                self.name
            ));
        }
        if self.duration.as_std().is_zero() {
            return Err("duration must be greater than 0".into());
        }
        if self.arrivals.is_empty() {
            return Err("arrivals needs at least one {at, rate} point".into());
        }
        for (i, point) in self.arrivals.iter().enumerate() {
            if !point.rate.is_finite() || point.rate < 0.0 {
                return Err(format!("arrivals[{i}].rate must be a number ≥ 0, not {}", point.rate));
            }
            if i > 0 && point.at < self.arrivals[i - 1].at {
                return Err(format!(
                    "arrivals[{i}].at ({}) is earlier than arrivals[{}].at ({}): points must be in time order",
                    point.at,
                    i - 1,
                    self.arrivals[i - 1].at
                ));
            }
        }
        let expected = self.expected_messages();
        if expected > MAX_MESSAGES {
            return Err(format!(
                "the arrivals add up to about {expected:.0} messages; at most {MAX_MESSAGES:.0} are supported"
            ));
        }
        let p = &self.processing;
        if p.mean.as_std().is_zero() {
            return Err("processing.mean must be greater than 0".into());
        }
        match (p.distribution, p.sigma) {
            (Distribution::Lognormal, None) => return Err("processing.sigma is required for lognormal".into()),
            (Distribution::Lognormal, Some(s)) if !s.is_finite() || s <= 0.0 || s > 5.0 => {
                return Err(format!("processing.sigma must be in (0, 5], not {s}"));
            }
            (Distribution::Constant | Distribution::Exponential, Some(_)) => {
                return Err("processing.sigma applies only to the lognormal distribution".into());
            }
            _ => {}
        }
        for (i, change) in p.changes.iter().enumerate() {
            if change.mean.as_std().is_zero() {
                return Err(format!("processing.changes[{i}].mean must be greater than 0"));
            }
            if i > 0 && change.at < p.changes[i - 1].at {
                return Err(format!(
                    "processing.changes[{i}].at is earlier than the change before it"
                ));
            }
        }
        let c = &self.consumer;
        if c.concurrency == 0 {
            return Err("consumer.concurrency must be at least 1".into());
        }
        if c.max_replicas == 0 {
            return Err("consumer.max_replicas must be at least 1".into());
        }
        if c.max_replicas > 10_000 {
            return Err("consumer.max_replicas must be at most 10000".into());
        }
        if c.min_replicas > c.max_replicas {
            return Err(format!(
                "consumer.min_replicas ({}) is greater than max_replicas ({})",
                c.min_replicas, c.max_replicas
            ));
        }
        if c.initial_replicas < c.min_replicas || c.initial_replicas > c.max_replicas {
            return Err(format!(
                "consumer.initial_replicas ({}) must be within min_replicas..=max_replicas ({}..={})",
                c.initial_replicas, c.min_replicas, c.max_replicas
            ));
        }
        if self.slo.target_latency.as_std().is_zero() {
            return Err("slo.target_latency must be greater than 0".into());
        }
        Ok(())
    }

    pub fn duration_secs(&self) -> f64 {
        self.duration.as_secs_f64()
    }

    /// The configured arrival rate at `t` seconds: linear between points, a step where two
    /// points share a time (the later one applies from then on), constant before the first and
    /// after the last point.
    pub fn rate_at(&self, t: f64) -> f64 {
        let points = &self.arrivals;
        let Some(first) = points.first() else { return 0.0 };
        if t < first.at.as_secs_f64() {
            return first.rate;
        }
        // The last point at or before t; the segment runs to the next point.
        let i = points.partition_point(|p| p.at.as_secs_f64() <= t) - 1;
        match points.get(i + 1) {
            None => points[i].rate,
            Some(next) => {
                let (t0, t1) = (points[i].at.as_secs_f64(), next.at.as_secs_f64());
                let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.0 };
                points[i].rate + f * (next.rate - points[i].rate)
            }
        }
    }

    /// The mean processing time for a message that starts processing at `t` seconds.
    pub fn mean_at(&self, t: f64) -> f64 {
        let changes = &self.processing.changes;
        let i = changes.partition_point(|c| c.at.as_secs_f64() <= t);
        match i {
            0 => self.processing.mean.as_secs_f64(),
            i => changes[i - 1].mean.as_secs_f64(),
        }
    }

    /// Linear pieces of the rate over [0, duration]: (start, end, rate at start, rate at end).
    fn segments(&self) -> Vec<(f64, f64, f64, f64)> {
        let end = self.duration_secs();
        let mut cuts: Vec<f64> = vec![0.0, end];
        cuts.extend(
            self.arrivals
                .iter()
                .map(|p| p.at.as_secs_f64())
                .filter(|&t| t > 0.0 && t < end),
        );
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        cuts.windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                // Evaluate just inside the segment so that steps at its ends belong to neighbours.
                let eps = (b - a) * 1e-9;
                let ra = self.rate_at(a);
                let rb = self.rate_before(b, eps);
                (a, b, ra, rb)
            })
            .collect()
    }

    /// The rate just before `t` (the left limit at a step).
    fn rate_before(&self, t: f64, eps: f64) -> f64 {
        // Linear inside a segment: extrapolate from just before.
        let before = self.rate_at(t - eps);
        let slope = (self.rate_at(t - eps) - self.rate_at(t - 2.0 * eps)) / eps;
        (before + slope * eps).max(0.0)
    }

    pub fn expected_messages(&self) -> f64 {
        self.segments()
            .iter()
            .map(|(a, b, ra, rb)| (b - a) * (ra + rb) / 2.0)
            .sum()
    }

    /// Whether the peak demand (rate × mean processing time) fits `max_replicas × concurrency`
    /// servers at all. Where it does not, no policy can meet the target and the measure is how
    /// fast the backlog drains once the overload ends. Returns the end of the last overload.
    pub fn overload_end(&self) -> Option<f64> {
        let capacity = f64::from(self.consumer.max_replicas) * f64::from(self.consumer.concurrency);
        let end = self.duration_secs();
        let step = 0.1;
        let mut last = None;
        let mut t = 0.0;
        while t < end {
            if self.rate_at(t) * self.mean_at(t) > capacity {
                last = Some(t + step);
            }
            t += step;
        }
        last
    }

    /// The traffic of this scenario, the same for every policy (common random numbers: the
    /// policies are compared on identical arrivals and identical service-time draws).
    pub fn traffic(&self) -> Traffic {
        // Independent streams of one seed: arrivals and service draws do not shift each other.
        let mut arrivals_rng = ChaCha8Rng::seed_from_u64(self.seed);
        arrivals_rng.set_stream(1);
        let mut draws_rng = ChaCha8Rng::seed_from_u64(self.seed);
        draws_rng.set_stream(2);

        // Non-homogeneous Poisson process by thinning (Lewis & Shedler), segment by segment:
        // candidates at the segment's peak rate, each kept with probability rate(t) ÷ peak.
        let mut arrivals = Vec::with_capacity(self.expected_messages() as usize + 16);
        for (a, b, ra, rb) in self.segments() {
            let peak = ra.max(rb);
            if peak <= 0.0 {
                continue;
            }
            let mut t = a;
            loop {
                let e: f64 = arrivals_rng.sample(Exp1);
                t += e / peak;
                if t >= b {
                    break;
                }
                let rate = ra + (rb - ra) * (t - a) / (b - a);
                let u: f64 = arrivals_rng.random();
                if u * peak < rate {
                    arrivals.push(t);
                }
            }
        }
        let sigma = self.processing.sigma.unwrap_or(0.0);
        let draws = arrivals
            .iter()
            .map(|_| match self.processing.distribution {
                Distribution::Constant => 1.0,
                Distribution::Exponential => draws_rng.sample::<f64, _>(Exp1),
                // exp(σZ − σ²/2) has mean 1, so the configured mean is the distribution's mean.
                Distribution::Lognormal => {
                    let z: f64 = draws_rng.sample(StandardNormal);
                    (sigma * z - sigma * sigma / 2.0).exp()
                }
            })
            .collect();
        Traffic { arrivals, draws }
    }
}

/// Arrival times and the unit service-time draw of each message.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Seconds since the start, ascending.
    pub arrivals: Vec<f64>,
    /// Service time ÷ mean for each message (mean 1).
    pub draws: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const BURST: &str = "
name: burst
duration: 1800s
seed: 7
arrivals:
  - {at: 0s,   rate: 20}
  - {at: 300s, rate: 20}
  - {at: 300s, rate: 400}
  - {at: 600s, rate: 400}
  - {at: 600s, rate: 20}
processing:
  distribution: exponential
  mean: 200ms
  changes:
    - {at: 900s, mean: 400ms}
pod_startup: 15s
consumer: {concurrency: 1, min_replicas: 1, max_replicas: 60, initial_replicas: 1}
slo: {target_latency: 30s}
";

    #[test]
    fn parses_the_documented_example() {
        let s = Scenario::parse(BURST).unwrap();
        assert_eq!(s.name, "burst");
        assert_eq!(s.rate_at(0.0), 20.0);
        assert_eq!(s.rate_at(299.9), 20.0);
        assert_eq!(s.rate_at(300.0), 400.0);
        assert_eq!(s.rate_at(599.0), 400.0);
        assert_eq!(s.rate_at(600.0), 20.0);
        assert_eq!(s.rate_at(5000.0), 20.0);
        assert_eq!(s.mean_at(899.0), 0.2);
        assert_eq!(s.mean_at(900.0), 0.4);
        assert!((s.expected_messages() - (1500.0 * 20.0 + 300.0 * 400.0)).abs() < 1.0);
    }

    #[test]
    fn ramps_are_linear() {
        let s = Scenario::parse(&BURST.replace("  - {at: 300s, rate: 400}\n", "")).unwrap();
        assert_eq!(s.rate_at(150.0), 20.0);
        assert!((s.rate_at(450.0) - 210.0).abs() < 1e-9);
    }

    #[test]
    fn same_seed_same_traffic_and_the_rate_is_honoured() {
        let s = Scenario::parse(BURST).unwrap();
        let (a, b) = (s.traffic(), s.traffic());
        assert_eq!(a.arrivals, b.arrivals);
        assert_eq!(a.draws, b.draws);
        let expected = s.expected_messages();
        let n = a.arrivals.len() as f64;
        assert!((n - expected).abs() < 4.0 * expected.sqrt(), "{n} vs {expected}");
        let in_burst = a.arrivals.iter().filter(|&&t| (300.0..600.0).contains(&t)).count() as f64;
        assert!((in_burst - 120_000.0).abs() < 2_000.0, "{in_burst}");
        let mean_draw = a.draws.iter().sum::<f64>() / n;
        assert!((mean_draw - 1.0).abs() < 0.01, "{mean_draw}");
        let other = Scenario::parse(&BURST.replace("seed: 7", "seed: 8")).unwrap().traffic();
        assert_ne!(a.arrivals, other.arrivals);
    }

    #[test]
    fn lognormal_draws_have_mean_one() {
        let s = Scenario::parse(
            &BURST
                .replace("distribution: exponential", "distribution: lognormal")
                .replace("mean: 200ms\n", "mean: 200ms\n  sigma: 1.0\n"),
        )
        .unwrap();
        let w = s.traffic();
        let mean = w.draws.iter().sum::<f64>() / w.draws.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            (
                BURST.replace("seed: 7", "seed: 7\ncolour: red"),
                "unknown field `colour`",
            ),
            (BURST.replace("1800s", "1800"), "invalid duration"),
            (
                BURST.replace("{at: 600s, rate: 20}", "{at: 100s, rate: 20}"),
                "time order",
            ),
            (BURST.replace("rate: 400}", "rate: -4}"), "≥ 0"),
            (
                BURST.replace("mean: 200ms", "mean: 200ms\n  sigma: 1"),
                "only to the lognormal",
            ),
            (
                BURST.replace("distribution: exponential", "distribution: lognormal"),
                "sigma is required",
            ),
            (
                BURST.replace("distribution: exponential", "distribution: pareto"),
                "unknown variant",
            ),
            (
                BURST.replace("min_replicas: 1", "min_replicas: 70"),
                "greater than max_replicas",
            ),
            (
                BURST.replace("initial_replicas: 1", "initial_replicas: 0"),
                "initial_replicas",
            ),
            (BURST.replace("name: burst", "name: a/b"), "may contain only"),
            (BURST.replace("slo: {target_latency: 30s}", ""), "missing field `slo`"),
        ];
        for (text, expected) in cases {
            let err = Scenario::parse(&text).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }

    #[test]
    fn overload_is_detected() {
        // 400/s × 200 ms needs 80 servers: the documented example is beyond its 60.
        let end = Scenario::parse(BURST).unwrap().overload_end().unwrap();
        assert!((end - 600.0).abs() < 0.2, "{end}");
        let s = Scenario::parse(&BURST.replace("max_replicas: 60", "max_replicas: 100")).unwrap();
        assert_eq!(s.overload_end(), None);
    }
}
