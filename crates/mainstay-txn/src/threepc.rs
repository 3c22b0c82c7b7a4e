//! Three-phase commit (seed Part I §2: CanCommit → PreCommit → DoCommit), as sans-IO state
//! machines driven by a deterministic network [`sim::Simulation`].
//!
//! The added PreCommit phase removes 2PC's blocking: a participant that voted yes and then
//! hears nothing **aborts** if it never got PreCommit (nobody can have committed: the
//! coordinator only sends DoCommit after PreCommit), and **commits** if it got PreCommit
//! (everyone voted yes). The coordinator aborts when a vote is missing, and once it has
//! sent PreCommit it always goes on to DoCommit.
//!
//! **Guarantee — only under bounded message delay and crash-stop failures:** all
//! participants that decide, decide alike, and nobody commits unless everyone voted yes.
//! The simulation tests check it over hundreds of seeded runs with random crashes.
//!
//! **The partition hazard** (why nobody ships 3PC, and why Mainstay's server offers 2PC with
//! a durable decision log and sagas instead): if the network splits after some
//! participants got PreCommit and others did not, the first side times out and commits
//! while the second times out and aborts. Timeouts cannot tell a slow or partitioned peer
//! from a crashed one. `threepc_partition_splits_the_outcome` exhibits it deterministically.
//! Use these machines to study the protocol or to embed them in a transport whose delays
//! *are* bounded; for anything that crosses an ordinary network, use [`crate::twopc`].

pub mod sim;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// A node: `0` is the coordinator, `1..=n` the participants.
pub type NodeId = usize;

/// The coordinator's node id.
pub const COORDINATOR: NodeId = 0;

/// Protocol messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Phase 1 question.
    CanCommit,
    /// A participant's answer.
    Vote(bool),
    /// Phase 2: everyone voted yes.
    PreCommit,
    /// A participant got PreCommit.
    Ack,
    /// Phase 3: commit.
    DoCommit,
    /// Abort.
    Abort,
}

/// What a machine asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `to`.
    Send(NodeId, Msg),
    /// Call `on_timeout` after this long (replacing any earlier timer).
    SetTimer(Duration),
    /// The machine decided.
    Decide(Outcome),
}

/// A final decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Committed.
    Committed,
    /// Aborted.
    Aborted,
}

/// Coordinator states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorState {
    /// Not started.
    Init,
    /// Collecting votes.
    Waiting(BTreeSet<NodeId>),
    /// PreCommit sent; collecting acks.
    PreCommitted(BTreeSet<NodeId>),
    /// Decided.
    Done(Outcome),
}

/// The coordinator's state machine.
#[derive(Clone, Debug)]
pub struct Coordinator {
    participants: usize,
    timeout: Duration,
    state: CoordinatorState,
}

impl Coordinator {
    /// A coordinator of `participants` (ids `1..=participants`) with a per-phase timeout.
    pub fn new(participants: usize, timeout: Duration) -> Self {
        Coordinator {
            participants,
            timeout,
            state: CoordinatorState::Init,
        }
    }

    /// Its state.
    pub fn state(&self) -> &CoordinatorState {
        &self.state
    }

    fn broadcast(&self, msg: Msg, out: &mut Vec<Action>) {
        out.extend((1..=self.participants).map(|p| Action::Send(p, msg)));
    }

    fn decide(&mut self, outcome: Outcome, out: &mut Vec<Action>) {
        let msg = match outcome {
            Outcome::Committed => Msg::DoCommit,
            Outcome::Aborted => Msg::Abort,
        };
        self.broadcast(msg, out);
        self.state = CoordinatorState::Done(outcome);
        out.push(Action::Decide(outcome));
    }

    /// Starts phase 1.
    pub fn start(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.broadcast(Msg::CanCommit, &mut out);
        out.push(Action::SetTimer(self.timeout));
        self.state = CoordinatorState::Waiting(BTreeSet::new());
        out
    }

    /// Handles a message from `from`.
    pub fn on_message(&mut self, from: NodeId, msg: Msg) -> Vec<Action> {
        let mut out = Vec::new();
        match (&mut self.state, msg) {
            (CoordinatorState::Waiting(_), Msg::Vote(false)) => {
                self.decide(Outcome::Aborted, &mut out)
            }
            (CoordinatorState::Waiting(votes), Msg::Vote(true)) => {
                votes.insert(from);
                if votes.len() == self.participants {
                    self.broadcast(Msg::PreCommit, &mut out);
                    out.push(Action::SetTimer(self.timeout));
                    self.state = CoordinatorState::PreCommitted(BTreeSet::new());
                }
            }
            (CoordinatorState::PreCommitted(acks), Msg::Ack) => {
                acks.insert(from);
                if acks.len() == self.participants {
                    self.decide(Outcome::Committed, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// Handles its timer: a missing vote aborts; missing acks still commit (everyone voted
    /// yes, and participants holding PreCommit commit on their own timeout).
    pub fn on_timeout(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            CoordinatorState::Waiting(_) => self.decide(Outcome::Aborted, &mut out),
            CoordinatorState::PreCommitted(_) => self.decide(Outcome::Committed, &mut out),
            _ => {}
        }
        out
    }
}

/// Participant states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantState {
    /// Waiting for CanCommit.
    Init,
    /// Voted yes; waiting for PreCommit.
    Uncertain,
    /// Got PreCommit; waiting for DoCommit.
    PreCommitted,
    /// Decided.
    Done(Outcome),
}

/// A participant's state machine.
#[derive(Clone, Debug)]
pub struct Participant {
    vote: bool,
    timeout: Duration,
    state: ParticipantState,
}

impl Participant {
    /// A participant that will vote `vote`, with a per-phase timeout.
    pub fn new(vote: bool, timeout: Duration) -> Self {
        Participant {
            vote,
            timeout,
            state: ParticipantState::Init,
        }
    }

    /// Its state.
    pub fn state(&self) -> ParticipantState {
        self.state
    }

    /// Starts it: if CanCommit never comes, it aborts.
    pub fn start(&mut self) -> Vec<Action> {
        vec![Action::SetTimer(self.timeout * 2)]
    }

    fn decide(&mut self, outcome: Outcome, out: &mut Vec<Action>) {
        if let ParticipantState::Done(_) = self.state {
            return;
        }
        self.state = ParticipantState::Done(outcome);
        out.push(Action::Decide(outcome));
    }

    /// Handles a message (always from the coordinator).
    pub fn on_message(&mut self, msg: Msg) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, msg) {
            (ParticipantState::Init, Msg::CanCommit) => {
                out.push(Action::Send(COORDINATOR, Msg::Vote(self.vote)));
                if self.vote {
                    self.state = ParticipantState::Uncertain;
                    out.push(Action::SetTimer(self.timeout));
                } else {
                    self.decide(Outcome::Aborted, &mut out);
                }
            }
            (ParticipantState::Uncertain, Msg::PreCommit) => {
                self.state = ParticipantState::PreCommitted;
                out.push(Action::Send(COORDINATOR, Msg::Ack));
                out.push(Action::SetTimer(self.timeout));
            }
            (ParticipantState::Uncertain | ParticipantState::PreCommitted, Msg::DoCommit) => {
                self.decide(Outcome::Committed, &mut out)
            }
            (
                ParticipantState::Init
                | ParticipantState::Uncertain
                | ParticipantState::PreCommitted,
                Msg::Abort,
            ) => self.decide(Outcome::Aborted, &mut out),
            _ => {}
        }
        out
    }

    /// Handles its timer: the 3PC rule.
    pub fn on_timeout(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            ParticipantState::Init | ParticipantState::Uncertain => {
                self.decide(Outcome::Aborted, &mut out)
            }
            ParticipantState::PreCommitted => self.decide(Outcome::Committed, &mut out),
            ParticipantState::Done(_) => {}
        }
        out
    }
}
