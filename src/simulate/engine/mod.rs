//! The event-driven queue simulation: a FIFO stream, a consumer group, pods that take
//! `pod_startup` to start consuming, and a scaling policy deciding the replica count.
//!
//! Events (arrival, completion, pod ready, redelivery) are processed in time order and the
//! policy runs when it asks to; between two of these nothing changes, which is what lets the
//! [`Meter`] integrate replica-seconds and SLO violation exactly.

mod pods;

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, VecDeque},
    time::Duration as StdDuration,
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{
    measures::{Measures, Meter},
    scenario::{Scenario, Traffic},
};
use crate::autoscale::{ConsumerObservation, Observation};

/// How long an entry delivered to a pod that was killed stays pending before another consumer
/// may claim it (the workers' XAUTOCLAIM min-idle time, the "visibility timeout").
pub const VISIBILITY_TIMEOUT: f64 = 300.0;

/// How a policy's Deployment removes pods when it scales down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// streamq: starting pods first, then idle ones; a busy pod stops taking messages and exits
    /// when its in-flight messages are done (nothing is interrupted).
    Graceful,
    /// A plain Deployment scaled by an HPA: starting pods first, then arbitrary ready pods,
    /// killed with their in-flight messages, which wait out [`VISIBILITY_TIMEOUT`].
    Arbitrary,
}

/// A policy deciding replicas, called at the times it asks for.
pub trait ScalingPolicy {
    fn removal(&self) -> Removal;
    /// When the policy next wants to run (seconds since the start).
    fn next_tick(&self) -> f64;
    /// Runs the policy at `now`; `Some(n)` sets the Deployment's replicas to n.
    fn tick(&mut self, now: f64, sim: &Sim<'_>) -> Option<u32>;
}

/// One point of the time series, every simulated second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub t: f64,
    /// Messages that arrived in the second before `t`.
    pub arrivals: u32,
    /// Messages waiting (undelivered, or interrupted and not yet redelivered).
    pub backlog: u64,
    /// Pods that exist: starting, ready or finishing their last messages.
    pub replicas: u32,
}

/// What one simulated run gives: its measures, and what the tables and plots add to them.
#[derive(Clone, Debug)]
pub struct SimulatedRun {
    pub measures: Measures,
    /// In a scenario beyond max_replicas: seconds from the end of the overload until nothing
    /// waits any more (`None`: still waiting when the simulation ended).
    pub drain_s: Option<f64>,
    /// Handler time of every completed message ÷ concurrency: the replica-seconds no policy can
    /// go below.
    pub busy_replica_seconds: f64,
    pub series: Vec<Point>,
}

#[derive(Clone, Debug)]
struct Pod {
    id: u32,
    ready: bool,
    draining: bool,
    /// The message in each concurrency slot and when it started.
    slots: Vec<Option<(u32, f64)>>,
    in_flight: u32,
    processed: u64,
    busy: f64,
    last_active: f64,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Complete { pod: u32, slot: u32, msg: u32 },
    Ready { pod: u32 },
    Redeliver { msg: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Event {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Sequence numbers break ties, so equal times keep their insertion order.
        self.t.total_cmp(&other.t).then(self.seq.cmp(&other.seq))
    }
}

/// The simulated world. Policies read it through the accessors.
pub struct Sim<'a> {
    scenario: &'a Scenario,
    traffic: &'a Traffic,
    now: f64,
    end: f64,
    concurrency: u32,
    startup: f64,
    removal: Removal,
    next_arrival: usize,
    /// Undelivered entries (the group's lag), oldest first.
    new_queue: VecDeque<u32>,
    /// Interrupted entries whose visibility timeout expired: claimed before new entries.
    redeliver_queue: VecDeque<u32>,
    /// Interrupted entries still within their visibility timeout.
    limbo: Vec<u32>,
    delivered_new: u64,
    pods: Vec<Pod>,
    /// Indices into `pods` of the pods that exist.
    alive: Vec<u32>,
    free_slots: u64,
    desired: u32,
    events: BinaryHeap<Reverse<Event>>,
    seq: u64,
    /// Each message's (last) processing start; NaN while not started.
    starts: Vec<f64>,
    meter: Meter,
    rng: ChaCha8Rng,
    series: Vec<Point>,
    overload_end: Option<f64>,
    drained_at: Option<f64>,
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario, traffic: &'a Traffic, removal: Removal) -> Self {
        let consumer = scenario.consumer;
        let mut removal_rng = ChaCha8Rng::seed_from_u64(scenario.seed);
        removal_rng.set_stream(3);
        let mut sim = Sim {
            scenario,
            traffic,
            now: 0.0,
            end: scenario.duration_secs(),
            concurrency: consumer.concurrency,
            startup: scenario.pod_startup.as_secs_f64(),
            removal,
            next_arrival: 0,
            new_queue: VecDeque::new(),
            redeliver_queue: VecDeque::new(),
            limbo: Vec::new(),
            delivered_new: 0,
            pods: Vec::new(),
            alive: Vec::new(),
            free_slots: 0,
            desired: consumer.initial_replicas,
            events: BinaryHeap::new(),
            seq: 0,
            starts: vec![f64::NAN; traffic.arrivals.len()],
            meter: Meter::new(scenario.slo.target_latency.as_secs_f64()),
            rng: removal_rng,
            series: Vec::new(),
            overload_end: scenario.overload_end(),
            drained_at: None,
        };
        // The initial replicas are running when the simulation starts.
        for _ in 0..consumer.initial_replicas {
            let pod = sim.spawn();
            sim.make_ready(pod);
        }
        sim
    }

    pub fn now(&self) -> f64 {
        self.now
    }

    /// The Deployment's spec.replicas.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// Entries never delivered to the group (XINFO GROUPS lag).
    pub fn lag(&self) -> u64 {
        self.new_queue.len() as u64
    }

    /// Entries delivered and not acknowledged (XINFO GROUPS pending): in flight, plus those
    /// of killed pods waiting for their visibility timeout or for a claim.
    pub fn pending(&self) -> u64 {
        self.in_flight() + self.limbo.len() as u64 + self.redeliver_queue.len() as u64
    }

    /// Messages being processed.
    pub fn in_flight(&self) -> u64 {
        self.alive
            .iter()
            .map(|&i| u64::from(self.pods[i as usize].in_flight))
            .sum()
    }

    /// Messages that arrived so far (XINFO STREAM entries-added).
    pub fn entries_added(&self) -> u64 {
        self.next_arrival as u64
    }

    /// Messages that arrived in `[from, to)`.
    pub fn arrivals_between(&self, from: f64, to: f64) -> u64 {
        let arrivals = &self.traffic.arrivals[..self.next_arrival];
        let a = arrivals.partition_point(|&t| t < from);
        let b = arrivals.partition_point(|&t| t < to);
        (b - a) as u64
    }

    /// Pods that are ready and not terminating (status.readyReplicas).
    pub fn ready(&self) -> u32 {
        self.alive
            .iter()
            .filter(|&&i| {
                let pod = &self.pods[i as usize];
                pod.ready && !pod.draining
            })
            .count() as u32
    }

    pub fn scenario(&self) -> &Scenario {
        self.scenario
    }

    /// What the operator's sampler would read from Redis and the Deployment now.
    pub fn observation(&self) -> Observation {
        let at = StdDuration::from_secs_f64(self.now);
        let consumers = self
            .alive
            .iter()
            .map(|&i| &self.pods[i as usize])
            .filter(|pod| pod.ready)
            .map(|pod| ConsumerObservation {
                name: format!("pod-{}", pod.id),
                pending: u64::from(pod.in_flight),
                idle: StdDuration::from_secs_f64((self.now - pod.last_active).max(0.0)),
                processed: Some(pod.processed),
                busy: Some(StdDuration::from_secs_f64(pod.busy)),
            })
            .collect();
        Observation {
            at,
            entries_added: self.entries_added(),
            entries_read: Some(self.delivered_new),
            lag: Some(self.lag()),
            pending: self.pending(),
            oldest_undelivered_age: self
                .new_queue
                .front()
                .map(|&m| StdDuration::from_secs_f64((self.now - self.traffic.arrivals[m as usize]).max(0.0))),
            consumers,
            current_replicas: self.desired,
            ready_replicas: self.ready(),
        }
    }

    fn backlog(&self) -> u64 {
        (self.new_queue.len() + self.redeliver_queue.len() + self.limbo.len()) as u64
    }

    /// When the oldest message that is not being processed arrived.
    fn oldest_waiting(&self) -> Option<f64> {
        let arrivals = &self.traffic.arrivals;
        let front = self.new_queue.front().map(|&m| arrivals[m as usize]);
        let others = self
            .redeliver_queue
            .iter()
            .chain(&self.limbo)
            .map(|&m| arrivals[m as usize]);
        front.into_iter().chain(others).min_by(f64::total_cmp)
    }

    fn after_event(&mut self) {
        let backlog = self.backlog();
        self.meter.backlog(backlog);
        if let Some(overload_end) = self.overload_end
            && self.drained_at.is_none()
            && self.now >= overload_end
            && backlog == 0
        {
            self.drained_at = Some(self.now);
        }
    }

    fn finish(self) -> SimulatedRun {
        let starts = self.starts.iter().map(|&s| (!s.is_nan()).then_some(s));
        SimulatedRun {
            measures: self
                .meter
                .finish(self.end, self.traffic.arrivals.iter().copied().zip(starts)),
            busy_replica_seconds: self.pods.iter().map(|p| p.busy).sum::<f64>() / f64::from(self.concurrency),
            drain_s: self
                .overload_end
                .and_then(|overload_end| self.drained_at.map(|t| t - overload_end)),
            series: self.series,
        }
    }
}

/// Runs `scenario` with `traffic` under `policy`.
pub fn run(scenario: &Scenario, traffic: &Traffic, policy: &mut dyn ScalingPolicy) -> SimulatedRun {
    let mut sim = Sim::new(scenario, traffic, policy.removal());
    let mut next_record = 1.0;
    let mut last_record_arrivals = 0u64;
    loop {
        let t_event = sim.events.peek().map_or(f64::INFINITY, |Reverse(e)| e.t);
        let t_arrival = traffic.arrivals.get(sim.next_arrival).copied().unwrap_or(f64::INFINITY);
        let t_control = policy.next_tick();
        let t = t_event.min(t_arrival).min(t_control).min(next_record);
        if t > sim.end {
            sim.advance(sim.end);
            break;
        }
        sim.advance(t);
        // At equal times: events, then arrivals, then the record, then the policy.
        if t_event <= t {
            let Some(Reverse(event)) = sim.events.pop() else { break };
            sim.handle(event.kind);
        } else if t_arrival <= t {
            sim.new_queue.push_back(sim.next_arrival as u32);
            sim.next_arrival += 1;
        } else if next_record <= t {
            let added = sim.entries_added();
            sim.series.push(Point {
                t,
                arrivals: (added - last_record_arrivals) as u32,
                backlog: sim.backlog(),
                replicas: sim.alive.len() as u32,
            });
            last_record_arrivals = added;
            next_record += 1.0;
        } else if let Some(replicas) = policy.tick(t, &sim) {
            sim.scale_to(replicas);
        }
        sim.dispatch();
        sim.after_event();
    }
    sim.finish()
}
