//! The pods' side of the simulation: starting, becoming ready, taking entries, finishing them,
//! and leaving when the policy scales down.

use std::cmp::Reverse;

use rand::Rng;

use super::{Event, Kind, Pod, Removal, Sim, VISIBILITY_TIMEOUT};

impl Sim<'_> {
    pub(super) fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Reverse(Event { t, seq: self.seq, kind }));
    }

    pub(super) fn spawn(&mut self) -> u32 {
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

    pub(super) fn make_ready(&mut self, pod: u32) {
        let p = &mut self.pods[pod as usize];
        p.ready = true;
        p.last_active = self.now;
        self.free_slots += u64::from(self.concurrency);
    }

    pub(super) fn remove_alive(&mut self, pod: u32) {
        if let Some(at) = self.alive.iter().position(|&i| i == pod) {
            self.alive.remove(at);
        }
    }

    /// Moves the clock to `t`, metering the time in between.
    pub(super) fn advance(&mut self, t: f64) {
        if t - self.now > 0.0 {
            self.meter.elapse(self.now, t, self.alive.len(), self.oldest_waiting());
            self.now = t;
        }
    }

    /// Sets spec.replicas, starting or removing pods.
    pub(super) fn scale_to(&mut self, replicas: u32) {
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
    pub(super) fn dispatch(&mut self) {
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

    pub(super) fn handle(&mut self, kind: Kind) {
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
}
