//! Aggregates and the repository.

use mainstay_eventstore::{
    Direction, EventData, EventStore, ExpectedVersion, RecordedEvent, StoreError,
};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// A consistency boundary: decides on commands, evolves by events.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Stream prefix: aggregate `id` lives in stream `KIND-id`.
    const KIND: &'static str;
    /// What it is asked to do.
    type Command: Send + Sync;
    /// What happened (stored as JSON).
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stored type name of `event`.
    fn event_type(event: &Self::Event) -> &'static str;
    /// Decides: the events a command produces (none: nothing to do), or a refusal.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
    /// Evolves the state by one event. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);
}

/// What can go wrong running a command.
#[derive(Debug, thiserror::Error)]
pub enum CqrsError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command refused: {0}")]
    Rejected(#[source] E),
    /// Other writers kept changing the aggregate: still conflicting after this many tries.
    #[error("the aggregate kept changing under the command ({attempts} attempts)")]
    Conflict {
        /// Tries made.
        attempts: u32,
    },
    /// A stored event or snapshot does not deserialize into the aggregate's types.
    #[error("stream {stream:?} version {version}: {message}")]
    Corrupt {
        /// The stream.
        stream: String,
        /// The event's version (or the snapshot's).
        version: u64,
        /// Why.
        message: String,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An aggregate's state and the version it reflects (`None`: no events yet).
#[derive(Clone, Debug)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded in.
    pub version: Option<u64>,
}

/// What [`Repository::execute`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executed {
    /// The stream's version after the command.
    pub version: Option<u64>,
    /// Events appended.
    pub events: usize,
    /// Tries (1 + conflicts retried).
    pub attempts: u32,
}

/// Loads and saves aggregates of type `A` in an event store.
pub struct Repository<A> {
    store: Arc<dyn EventStore>,
    snapshot_every: Option<u64>,
    max_attempts: u32,
    _a: PhantomData<fn() -> A>,
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            snapshot_every: self.snapshot_every,
            max_attempts: self.max_attempts,
            _a: PhantomData,
        }
    }
}

/// Events read per round trip when loading.
const PAGE: usize = 1000;

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`: no snapshots, up to 50 tries per command (conflicts
    /// back off exponentially with jitter, up to 250 ms between tries).
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Repository {
            store,
            snapshot_every: None,
            max_attempts: 50,
            _a: PhantomData,
        }
    }

    /// Saves a snapshot whenever a command crosses a multiple of `n` events, and loads
    /// from the latest one.
    pub fn with_snapshots_every(mut self, n: u64) -> Self {
        self.snapshot_every = Some(n.max(1));
        self
    }

    /// Tries per command before [`CqrsError::Conflict`] (at least 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The stream of aggregate `id`.
    pub fn stream_of(id: &str) -> String {
        format!("{}-{id}", A::KIND)
    }

    fn decode(e: &RecordedEvent) -> Result<A::Event, CqrsError<A::Error>> {
        serde_json::from_value(e.data.clone()).map_err(|err| CqrsError::Corrupt {
            stream: e.stream.clone(),
            version: e.version,
            message: format!("event {:?} does not decode: {err}", e.event_type),
        })
    }

    /// Folds the stream's events from version `from` into `state`, stopping after
    /// `until` (version) or at the first event newer than `as_of_ms`.
    async fn fold(
        &self,
        stream: &str,
        mut state: Loaded<A>,
        until: Option<u64>,
        as_of_ms: Option<u64>,
    ) -> Result<Loaded<A>, CqrsError<A::Error>> {
        let mut from = state.version.map_or(0, |v| v + 1);
        loop {
            let page = match self
                .store
                .read_stream(stream, from, Direction::Forward, PAGE)
                .await
            {
                Ok(p) => p,
                Err(StoreError::StreamNotFound(_)) => return Ok(state),
                Err(e) => return Err(e.into()),
            };
            let n = page.len();
            for e in page {
                if until.is_some_and(|u| e.version > u)
                    || as_of_ms.is_some_and(|t| e.created_at_ms > t)
                {
                    return Ok(state);
                }
                state.state.apply(&Self::decode(&e)?);
                state.version = Some(e.version);
                from = e.version + 1;
            }
            if n < PAGE {
                return Ok(state);
            }
        }
    }

    async fn start_from_snapshot(
        &self,
        stream: &str,
        at_most: Option<u64>,
    ) -> Result<Loaded<A>, CqrsError<A::Error>> {
        let empty = Loaded {
            state: A::default(),
            version: None,
        };
        if self.snapshot_every.is_none() {
            return Ok(empty);
        }
        match self.store.load_snapshot(stream).await? {
            Some(s) if at_most.is_none_or(|v| s.version <= v) => Ok(Loaded {
                state: serde_json::from_value(s.data).map_err(|e| CqrsError::Corrupt {
                    stream: stream.to_string(),
                    version: s.version,
                    message: format!("snapshot does not decode: {e}"),
                })?,
                version: Some(s.version),
            }),
            _ => Ok(empty),
        }
    }

    /// The aggregate now: its latest snapshot plus the events after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, CqrsError<A::Error>> {
        let stream = Self::stream_of(id);
        let start = self.start_from_snapshot(&stream, None).await?;
        self.fold(&stream, start, None, None).await
    }

    /// The aggregate as it was at `version` (temporal query).
    pub async fn load_at(&self, id: &str, version: u64) -> Result<Loaded<A>, CqrsError<A::Error>> {
        let stream = Self::stream_of(id);
        let start = self.start_from_snapshot(&stream, Some(version)).await?;
        self.fold(&stream, start, Some(version), None).await
    }

    /// The aggregate as it was at `at_ms` (ms since the epoch; temporal query). Replays
    /// from the first retained event: snapshots do not record time.
    pub async fn load_as_of(&self, id: &str, at_ms: u64) -> Result<Loaded<A>, CqrsError<A::Error>> {
        let stream = Self::stream_of(id);
        let start = Loaded {
            state: A::default(),
            version: None,
        };
        self.fold(&stream, start, None, Some(at_ms)).await
    }

    /// Runs `command` on aggregate `id`: load, decide, append expecting the loaded
    /// version; on a conflict, reload and decide again after a jittered, growing pause.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
    ) -> Result<Executed, CqrsError<A::Error>> {
        let stream = Self::stream_of(id);
        for attempt in 1..=self.max_attempts {
            let loaded = self.load(id).await?;
            let events = loaded.state.handle(command).map_err(CqrsError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    version: loaded.version,
                    events: 0,
                    attempts: attempt,
                });
            }
            let expected = match loaded.version {
                None => ExpectedVersion::NoStream,
                Some(v) => ExpectedVersion::Exact(v),
            };
            let data = events
                .iter()
                .map(|e| {
                    serde_json::to_value(e)
                        .map(|v| EventData::new(A::event_type(e), v))
                        .map_err(|err| {
                            CqrsError::Store(StoreError::InvalidArgument {
                                field: "event".into(),
                                message: err.to_string(),
                            })
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            match self.store.append(&stream, expected, data).await {
                Ok(r) => {
                    let version = r.next_expected_version;
                    if let Some(n) = self.snapshot_every {
                        let before = loaded.version.map_or(0, |v| v + 1) / n;
                        if (version + 1) / n > before {
                            let mut state = loaded.state;
                            for e in &events {
                                state.apply(e);
                            }
                            let data = serde_json::to_value(&state).map_err(|err| {
                                CqrsError::Store(StoreError::InvalidArgument {
                                    field: "snapshot".into(),
                                    message: err.to_string(),
                                })
                            })?;
                            // A snapshot is an optimisation: failing to save one is not
                            // failing the command.
                            if let Err(e) = self.store.save_snapshot(&stream, version, data).await {
                                tracing::warn!(stream = %stream, error = %e, "snapshot not saved");
                            }
                        }
                    }
                    return Ok(Executed {
                        version: Some(version),
                        events: events.len(),
                        attempts: attempt,
                    });
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Exponential backoff with full jitter (1 ms doubling, capped at
                    // 250 ms): under heavy contention the writers spread out instead of
                    // colliding again in lockstep.
                    let cap = (1u64 << attempt.min(8)).min(250);
                    let pause = rand::rng().random_range(0..=cap);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CqrsError::Conflict {
            attempts: self.max_attempts,
        })
    }
}
