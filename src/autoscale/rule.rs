//! The rule that turns one sized, fresh sample into replicas:
//! - from zero, wake on the first message; to zero only after a whole idle `scale_down_delay`
//!   with an exact lag of 0 and nothing pending;
//! - up at once to the recommendation;
//! - down only on a known backlog, after a full scale-down window (see `window.rs`), to the
//!   window's highest recommendation, never below the consumers holding pending messages, and
//!   only by more than the deadband.

use std::time::Duration;

use super::{LagSource, Rule, SCALE_DOWN_DEADBAND};

/// Everything the rule looks at.
#[derive(Clone, Debug)]
pub struct Situation {
    /// spec.replicas now.
    pub current: u32,
    /// The sizing clamped to [max(min_replicas, 1), max_replicas].
    pub recommended: u32,
    pub min_replicas: u32,
    pub scale_down_delay: Duration,
    pub lag: Option<u64>,
    pub lag_source: LagSource,
    pub backlog: Option<u64>,
    pub pending: u64,
    /// Entries were added since the previous sample.
    pub arrived: bool,
    /// The previous sample was recent (not the first, not after a gap).
    pub fresh: bool,
    /// Time since messages last arrived, waited or were pending.
    pub idle_for: Duration,
    pub window_full: bool,
    pub fresh_for: Duration,
    /// The highest recommendation within the scale-down window.
    pub window_max: u32,
    /// Consumers holding pending messages (at most max_replicas).
    pub busy_consumers: u32,
}

/// The replicas, and the rule that chose them.
pub fn choose(s: &Situation) -> (u32, Rule) {
    let current = s.current;
    if current == 0 {
        let wake = s.arrived || s.backlog.is_some_and(|b| b > 0) || s.pending > 0;
        return if wake || s.min_replicas > 0 {
            (s.recommended, Rule::WakeFromZero)
        } else {
            (0, Rule::StayAtZero)
        };
    }
    if may_scale_to_zero(s) {
        return (0, Rule::ScaleToZero { idle_for: s.idle_for });
    }
    if s.recommended > current {
        return (s.recommended, Rule::ScaleUp { from: current });
    }
    if s.recommended == current {
        return (current, Rule::Steady);
    }
    scale_down(s)
}

/// Zero needs certainty: no arrivals, an exact lag of 0 and nothing pending, over a whole window.
fn may_scale_to_zero(s: &Situation) -> bool {
    s.min_replicas == 0
        && s.lag_source == LagSource::Exact
        && s.lag == Some(0)
        && s.pending == 0
        && !s.arrived
        && s.window_full
        && s.idle_for >= s.scale_down_delay
}

/// The recommendation is below `current`: how far down, if at all.
fn scale_down(s: &Situation) -> (u32, Rule) {
    let current = s.current;
    // A scale-down never goes below the consumers holding pending messages now. This is a floor
    // at the moment of scaling, not demand: kept in the window, the busiest instant of a minute
    // (Poisson arrivals spread over idle pods) would hold replicas up forever.
    let down_to = s.window_max.max(s.busy_consumers);
    let hold = |rule| (current, rule);
    if s.lag_source == LagSource::Unknown {
        return hold(Rule::BacklogUnknown { current });
    }
    if !s.window_full {
        return hold(if s.fresh {
            Rule::WindowFilling {
                current,
                fresh_for: s.fresh_for,
                delay: s.scale_down_delay,
            }
        } else {
            Rule::FirstAfterGap { current }
        });
    }
    if s.window_max >= current {
        return hold(Rule::DemandInWindow {
            current,
            demand: s.window_max,
            delay: s.scale_down_delay,
        });
    }
    if down_to >= current {
        return hold(Rule::ConsumersHoldPending {
            current,
            consumers: s.busy_consumers,
        });
    }
    // Within the deadband the noise of the estimates would move replicas back and forth.
    let deadband = (f64::from(current) * SCALE_DOWN_DEADBAND).ceil().max(1.0);
    if f64::from(current - down_to) < deadband {
        return hold(Rule::WithinDeadband { current, down_to });
    }
    (
        down_to,
        Rule::ScaleDown {
            from: current,
            delay: s.scale_down_delay,
        },
    )
}
