//! The event-driven queue simulation: a FIFO stream, a consumer group, pods that take
//! `pod_startup` to start consuming, and a scaling policy deciding the replica count.
//!
//! Events (arrival, completion, pod ready, redelivery) are processed in time order and the
//! policy runs when it asks to; between two of these nothing changes, which is what lets the
//! [`Meter`] integrate replica-seconds and SLO violation exactly.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, VecDeque},
    time::Duration as StdDuration,
};

use rand::{Rng, SeedableRng};
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

    fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Reverse(Event { t, seq: self.seq, kind }));
    }

    fn spawn(&mut self) -> u32 {
        let index = self.pods.len() as u32;
        self.pods.push(Pod {
            id: index,
            ready: false,
            draining: false,
            slots: vec![None; self.concurrency as usize],
            in_flight: 0,
            processed: 0,
            busy: 0.0,
            last_active: self.now,
        });
        self.alive.push(index);
        index
    }

    fn make_ready(&mut self, pod: u32) {
        let p = &mut self.pods[pod as usize];
        p.ready = true;
        p.last_active = self.now;
        self.free_slots += u64::from(self.concurrency);
    }

    fn remove_alive(&mut self, pod: u32) {
        if let Some(at) = self.alive.iter().position(|&i| i == pod) {
            self.alive.remove(at);
        }
    }

    /// Moves the clock to `t`, metering the time in between.
    fn advance(&mut self, t: f64) {
        if t - self.now > 0.0 {
            self.meter.elapse(self.now, t, self.alive.len(), self.oldest_waiting());
            self.now = t;
        }
    }

    /// Sets spec.replicas, starting or removing pods.
    fn scale_to(&mut self, replicas: u32) {
        if replicas == self.desired {
            return;
        }
        self.meter.scaled();
        self.desired = replicas;
        let active: Vec<u32> = self
            .alive
            .iter()
            .copied()
            .filter(|&i| !self.pods[i as usize].draining)
            .collect();
        let active_count = active.len() as u32;
        if replicas > active_count {
            for _ in active_count..replicas {
                let pod = self.spawn();
                self.push(self.now + self.startup, Kind::Ready { pod });
            }
            return;
        }
        let mut to_remove = active_count - replicas;
        // Pods still starting go first: a ReplicaSet deletes not-ready pods before ready ones.
        for &pod in active.iter().rev() {
            if to_remove == 0 {
                break;
            }
            if !self.pods[pod as usize].ready {
                self.remove_alive(pod);
                to_remove -= 1;
            }
        }
        let c = u64::from(self.concurrency);
        match self.removal {
            Removal::Graceful => {
                // Idle pods next (newest first), then busy ones finish and exit.
                for idle_pass in [true, false] {
                    for &pod in active.iter().rev() {
                        if to_remove == 0 {
                            break;
                        }
                        let p = &self.pods[pod as usize];
                        if !p.ready || p.draining || (idle_pass && p.in_flight > 0) {
                            continue;
                        }
                        let in_flight = u64::from(p.in_flight);
                        self.free_slots -= c - in_flight;
                        if in_flight == 0 {
                            self.remove_alive(pod);
                        } else {
                            self.pods[pod as usize].draining = true;
                        }
                        to_remove -= 1;
                    }
                }
            }
            Removal::Arbitrary => {
                let mut ready: Vec<u32> = active
                    .iter()
                    .copied()
                    .filter(|&i| self.pods[i as usize].ready)
                    .collect();
                while to_remove > 0 && !ready.is_empty() {
                    let pod = ready.swap_remove(self.rng.random_range(0..ready.len()));
                    let p = &mut self.pods[pod as usize];
                    let in_flight = u64::from(p.in_flight);
                    let killed: Vec<u32> = p.slots.iter_mut().filter_map(|s| s.take().map(|(m, _)| m)).collect();
                    p.in_flight = 0;
                    self.free_slots -= c - in_flight;
                    self.meter.interrupted(killed.len() as u64);
                    for msg in killed {
                        // It will start again after the timeout: its wait is not known yet.
                        self.starts[msg as usize] = f64::NAN;
                        self.limbo.push(msg);
                        self.push(self.now + VISIBILITY_TIMEOUT, Kind::Redeliver { msg });
                    }
                    self.remove_alive(pod);
                    to_remove -= 1;
                }
            }
        }
    }

    /// Hands waiting messages to free slots: claimed (redelivered) entries first, then new ones,
    /// to the first pod with room (pods blocked in XREADGROUP are served in turn).
    fn dispatch(&mut self) {
        while self.free_slots > 0 {
            let msg = if let Some(m) = self.redeliver_queue.pop_front() {
                m
            } else if let Some(m) = self.new_queue.pop_front() {
                self.delivered_new += 1;
                m
            } else {
                return;
            };
            let c = self.concurrency;
            let Some(&pod) = self.alive.iter().find(|&&i| {
                let p = &self.pods[i as usize];
                p.ready && !p.draining && p.in_flight < c
            }) else {
                // Unreachable while free_slots is kept right; put the message back regardless.
                self.new_queue.push_front(msg);
                return;
            };
            let start = self.now;
            let service = self.scenario.mean_at(start) * self.traffic.draws[msg as usize];
            let p = &mut self.pods[pod as usize];
            let slot = p.slots.iter().position(Option::is_none).unwrap_or(0);
            p.slots[slot] = Some((msg, start));
            p.in_flight += 1;
            p.last_active = start;
            self.free_slots -= 1;
            self.starts[msg as usize] = start;
            self.push(
                start + service,
                Kind::Complete {
                    pod,
                    slot: slot as u32,
                    msg,
                },
            );
        }
    }

    fn handle(&mut self, kind: Kind) {
        match kind {
            Kind::Complete { pod, slot, msg } => {
                let p = &mut self.pods[pod as usize];
                // A completion of a message whose pod was killed is void.
                let Some(Some((m, start))) = p.slots.get(slot as usize).copied() else {
                    return;
                };
                if m != msg {
                    return;
                }
                p.slots[slot as usize] = None;
                p.in_flight -= 1;
                p.processed += 1;
                p.busy += self.now - start;
                p.last_active = self.now;
                if p.draining {
                    if p.in_flight == 0 {
                        self.remove_alive(pod);
                    }
                } else {
                    self.free_slots += 1;
                }
            }
            Kind::Ready { pod } => {
                if self.alive.contains(&pod) {
                    self.make_ready(pod);
                }
            }
            Kind::Redeliver { msg } => {
                if let Some(at) = self.limbo.iter().position(|&m| m == msg) {
                    self.limbo.swap_remove(at);
                    self.redeliver_queue.push_back(msg);
                }
            }
        }
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
