//! A deterministic network simulation for the 3PC machines: seeded message latencies,
//! crash-stop nodes, and partitions, on a virtual clock. The same seed replays the same
//! run, event for event.

use super::{Action, Coordinator, Msg, NodeId, Outcome, Participant, COORDINATOR};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

/// A fault to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The node stops: it receives, sends and times out no more.
    Crash(NodeId),
    /// Messages between the two groups are lost, including those already in flight.
    Partition(Vec<NodeId>, Vec<NodeId>),
    /// Every partition heals.
    Heal,
}

/// When a fault is injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// At this virtual time.
    At(Duration),
    /// Right after `from` sends `msg` to `to` (before its next send).
    AfterSend {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// Message.
        msg: Msg,
    },
}

#[derive(Debug)]
enum Event {
    Deliver { from: NodeId, to: NodeId, msg: Msg },
    Timer { node: NodeId, generation: u64 },
    Inject(usize),
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// Each node's decision (index = node id; the coordinator is 0), if it made one.
    pub outcomes: Vec<Option<Outcome>>,
    /// Which nodes crashed.
    pub crashed: Vec<bool>,
    /// Every event, for a failing seed's post-mortem.
    pub trace: Vec<String>,
}

impl Report {
    /// True when every decision made (coordinator's and participants') is the same.
    pub fn consistent(&self) -> bool {
        let decided: BTreeSet<_> = self.outcomes.iter().flatten().map(|o| *o as u8).collect();
        decided.len() <= 1
    }

    /// Decisions of the participants that did not crash.
    pub fn live_participant_outcomes(&self) -> Vec<Option<Outcome>> {
        (1..self.outcomes.len())
            .filter(|&i| !self.crashed[i])
            .map(|i| self.outcomes[i])
            .collect()
    }
}

/// One simulated 3PC transaction.
pub struct Simulation {
    rng: StdRng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    coordinator: Coordinator,
    participants: Vec<Participant>,
    generations: Vec<u64>,
    crashed: Vec<bool>,
    cut: BTreeSet<(NodeId, NodeId)>,
    latency_us: (u64, u64),
    triggers: Vec<(When, Vec<Fault>, bool)>,
    outcomes: Vec<Option<Outcome>>,
    trace: Vec<String>,
}

impl Simulation {
    /// A transaction whose participants vote `votes` (participant `i + 1` votes
    /// `votes[i]`), every node with phase timeout `timeout`, latencies 1–10 ms.
    pub fn new(seed: u64, votes: &[bool], timeout: Duration) -> Self {
        let n = votes.len();
        Simulation {
            rng: StdRng::seed_from_u64(seed),
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            coordinator: Coordinator::new(n, timeout),
            participants: votes
                .iter()
                .map(|v| Participant::new(*v, timeout))
                .collect(),
            generations: vec![0; n + 1],
            crashed: vec![false; n + 1],
            cut: BTreeSet::new(),
            latency_us: (1_000, 10_000),
            triggers: Vec::new(),
            outcomes: vec![None; n + 1],
            trace: Vec::new(),
        }
    }

    /// Message latency bounds. Default: 1 ms to 10 ms.
    pub fn latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency_us = (
            min.as_micros() as u64,
            max.as_micros().max(min.as_micros()) as u64,
        );
        self
    }

    /// Injects `faults` when `when` happens.
    pub fn on(mut self, when: When, faults: Vec<Fault>) -> Self {
        self.triggers.push((when, faults, false));
        self
    }

    fn schedule(&mut self, at_us: u64, e: Event) {
        self.seq += 1;
        self.events.push(Some(e));
        self.queue
            .push(Reverse((at_us, self.seq, self.events.len() - 1)));
    }

    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn apply(&mut self, faults: Vec<Fault>) {
        for f in faults {
            self.trace.push(format!("{:>8}us fault {f:?}", self.now_us));
            match f {
                Fault::Crash(n) => self.crashed[n] = true,
                Fault::Partition(a, b) => {
                    for x in &a {
                        for y in &b {
                            self.cut.insert(((*x).min(*y), (*x).max(*y)));
                        }
                    }
                }
                Fault::Heal => self.cut.clear(),
            }
        }
    }

    fn perform(&mut self, node: NodeId, actions: Vec<Action>) {
        for a in actions {
            if self.crashed[node] {
                return;
            }
            match a {
                Action::Send(to, msg) => {
                    if self.is_cut(node, to) {
                        self.trace.push(format!(
                            "{:>8}us {node}->{to} {msg:?} LOST (partition)",
                            self.now_us
                        ));
                    } else {
                        let lat = self.rng.random_range(self.latency_us.0..=self.latency_us.1);
                        self.trace
                            .push(format!("{:>8}us {node}->{to} {msg:?}", self.now_us));
                        self.schedule(
                            self.now_us + lat,
                            Event::Deliver {
                                from: node,
                                to,
                                msg,
                            },
                        );
                    }
                    let fired: Vec<usize> = self
                        .triggers
                        .iter()
                        .enumerate()
                        .filter(|(_, (w, _, done))| {
                            !done
                                && *w
                                    == When::AfterSend {
                                        from: node,
                                        to,
                                        msg,
                                    }
                        })
                        .map(|(i, _)| i)
                        .collect();
                    for i in fired {
                        self.triggers[i].2 = true;
                        let faults = self.triggers[i].1.clone();
                        self.apply(faults);
                    }
                }
                Action::SetTimer(d) => {
                    self.generations[node] += 1;
                    let generation = self.generations[node];
                    self.schedule(
                        self.now_us + d.as_micros() as u64,
                        Event::Timer { node, generation },
                    );
                }
                Action::Decide(o) => {
                    self.trace
                        .push(format!("{:>8}us {node} decides {o:?}", self.now_us));
                    self.outcomes[node] = Some(o);
                }
            }
        }
    }

    /// Runs until no event is left (every timer fired or was superseded).
    pub fn run(mut self) -> Report {
        let at_triggers: Vec<(usize, u64)> = self
            .triggers
            .iter()
            .enumerate()
            .filter_map(|(i, (w, _, _))| match w {
                When::At(t) => Some((i, t.as_micros() as u64)),
                _ => None,
            })
            .collect();
        for (i, at) in at_triggers {
            self.schedule(at, Event::Inject(i));
        }
        let actions = self.coordinator.start();
        self.perform(COORDINATOR, actions);
        for p in 1..=self.participants.len() {
            let actions = self.participants[p - 1].start();
            self.perform(p, actions);
        }
        while let Some(Reverse((at, _, idx))) = self.queue.pop() {
            self.now_us = at;
            let Some(event) = self.events[idx].take() else {
                continue;
            };
            match event {
                Event::Inject(i) => {
                    if !self.triggers[i].2 {
                        self.triggers[i].2 = true;
                        let faults = self.triggers[i].1.clone();
                        self.apply(faults);
                    }
                }
                Event::Deliver { from, to, msg } => {
                    if self.crashed[to] || self.is_cut(from, to) {
                        self.trace
                            .push(format!("{:>8}us {from}->{to} {msg:?} dropped", self.now_us));
                        continue;
                    }
                    let actions = if to == COORDINATOR {
                        self.coordinator.on_message(from, msg)
                    } else {
                        self.participants[to - 1].on_message(msg)
                    };
                    self.perform(to, actions);
                }
                Event::Timer { node, generation } => {
                    if self.crashed[node] || generation != self.generations[node] {
                        continue;
                    }
                    let actions = if node == COORDINATOR {
                        self.coordinator.on_timeout()
                    } else {
                        self.participants[node - 1].on_timeout()
                    };
                    self.perform(node, actions);
                }
            }
        }
        Report {
            outcomes: self.outcomes,
            crashed: self.crashed,
            trace: self.trace,
        }
    }
}
