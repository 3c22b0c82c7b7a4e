//! Where change events go. A sink's `write` returns only once it holds the batch durably;
//! only then does the connector confirm the batch's transactions to the slot, so a crash
//! anywhere loses nothing: the source sends everything unconfirmed again.
//!
//! Delivery is at-least-once. A sink that can say how far it got ([`Sink::last_position`])
//! is effectively exactly-once: the connector drops what the sink already holds before
//! handing it a batch.

#[cfg(feature = "eventstore")]
pub mod eventstore;
#[cfg(feature = "nats")]
pub mod jetstream;
#[cfg(feature = "postgres-sink")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "webhook")]
pub mod webhook;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent, Position};

/// A destination for change events.
#[async_trait]
pub trait Sink: Send {
    /// A short name for errors and metrics.
    fn name(&self) -> &str;

    /// The position of the last event this sink holds durably, if it can tell; events at
    /// or before it are not handed to it again. Default: `None` (cannot tell).
    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        Ok(None)
    }

    /// Claims the sink for the connector instance holding fencing token `token` (its
    /// leadership epoch): from now on the sink refuses writes carrying a lower token with
    /// [`CdcError::Fenced`], atomically with the write itself. Returns `false` when the sink
    /// cannot enforce tokens (then a deposed instance may still write duplicates). Called
    /// before anything else under high availability. Default: `Ok(false)`.
    async fn fence(&mut self, token: u64) -> Result<bool, CdcError> {
        let _ = token;
        Ok(false)
    }

    /// Takes a batch, in source order. Returns once the events are durable; an error means
    /// the batch may be partly written and will be sent again.
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError>;
}

/// Appends one Debezium JSON envelope per line to `out`.
fn encode(events: &[ChangeEvent], out: &mut Vec<u8>) -> Result<(), CdcError> {
    let now = now_us();
    for event in events {
        serde_json::to_writer(&mut *out, &event.envelope(now))
            .map_err(|e| CdcError::Decode(format!("encoding an event: {e}")))?;
        out.push(b'\n');
    }
    Ok(())
}

/// Writes NDJSON envelopes to standard output; durable once flushed to the pipe.
#[derive(Debug, Default)]
pub struct StdoutSink {
    buffer: Vec<u8>,
}

impl StdoutSink {
    /// A sink on this process's standard output.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        self.buffer.clear();
        encode(events, &mut self.buffer)?;
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buffer)
            .and_then(|_| out.flush())
            .map_err(|e| CdcError::Sink {
                sink: "stdout".into(),
                message: e.to_string(),
            })
    }
}

/// Encodes every event as the stdout sink would, and discards it (benchmarks).
#[derive(Debug, Default)]
pub struct NullSink {
    buffer: Vec<u8>,
    /// Events taken so far.
    pub events: u64,
    /// Bytes encoded so far.
    pub bytes: u64,
}

#[async_trait]
impl Sink for NullSink {
    fn name(&self) -> &str {
        "null"
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        self.buffer.clear();
        encode(events, &mut self.buffer)?;
        self.events += events.len() as u64;
        self.bytes += self.buffer.len() as u64;
        Ok(())
    }
}

/// Appends NDJSON envelopes to a file, fsynced per batch, and keeps how far it got in a
/// sidecar `<file>.offset` (the last position and the file's length), replaced atomically
/// after each batch. On open, anything past the recorded length — a batch written but
/// not recorded before a crash — is cut off, and the connector sends it again: the file
/// holds every event exactly once.
pub struct FileSink {
    path: PathBuf,
    offset_path: PathBuf,
    file: std::fs::File,
    length: u64,
    last: Option<Position>,
    buffer: Vec<u8>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileOffset {
    length: u64,
    last: Option<(u64, u64, u64, bool)>,
}

impl FileSink {
    /// Opens (or creates) `path`. A non-empty file without its `.offset` sidecar is refused
    /// rather than appended to: it was not written by this sink.
    pub fn open(path: impl AsRef<Path>) -> Result<FileSink, CdcError> {
        let path = path.as_ref().to_path_buf();
        let offset_path = PathBuf::from(format!("{}.offset", path.display()));
        let display = path.display().to_string();
        let err = |what: &str, e: std::io::Error| CdcError::Sink {
            sink: format!("file {display}"),
            message: format!("{what}: {e}"),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err("opening", e))?;
        let size = file
            .metadata()
            .map_err(|e| err("reading its size", e))?
            .len();
        let offset = match std::fs::read(&offset_path) {
            Ok(bytes) => {
                serde_json::from_slice::<FileOffset>(&bytes).map_err(|e| CdcError::Sink {
                    sink: format!("file {}", path.display()),
                    message: format!("offset file {} is corrupt: {e}", offset_path.display()),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if size > 0 {
                    return Err(CdcError::Sink {
                        sink: format!("file {}", path.display()),
                        message: format!(
                            "the file has {size} bytes but no {} beside it: not written by this sink; choose a new file",
                            offset_path.display()
                        ),
                    });
                }
                FileOffset {
                    length: 0,
                    last: None,
                }
            }
            Err(e) => return Err(err("reading the offset file", e)),
        };
        if size < offset.length {
            return Err(CdcError::Sink {
                sink: format!("file {}", path.display()),
                message: format!(
                    "the file is {size} bytes, shorter than the {} its offset file records: it was truncated by someone else",
                    offset.length
                ),
            });
        }
        if size > offset.length {
            file.set_len(offset.length)
                .map_err(|e| err("cutting an unrecorded batch", e))?;
            file.sync_all().map_err(|e| err("fsync", e))?;
        }
        let sink = FileSink {
            path,
            offset_path,
            file,
            length: offset.length,
            last: offset
                .last
                .map(|(commit_lsn, lsn, index, snapshot)| Position {
                    commit_lsn,
                    lsn,
                    index,
                    snapshot,
                }),
            buffer: Vec::new(),
        };
        sink.record()
            .map_err(|e| err("writing the offset file", e))?;
        Ok(sink)
    }

    fn record(&self) -> std::io::Result<()> {
        let offset = FileOffset {
            length: self.length,
            last: self
                .last
                .map(|p| (p.commit_lsn, p.lsn, p.index, p.snapshot)),
        };
        let tmp = PathBuf::from(format!("{}.tmp", self.offset_path.display()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&offset).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.offset_path)?;
        if let Some(dir) = self
            .offset_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        Ok(self.last)
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        use std::io::{Seek, SeekFrom};
        let Some(last) = events.last() else {
            return Ok(());
        };
        self.buffer.clear();
        encode(events, &mut self.buffer)?;
        let err = |e: std::io::Error| CdcError::Sink {
            sink: format!("file {}", self.path.display()),
            message: e.to_string(),
        };
        let file = &mut self.file;
        file.seek(SeekFrom::Start(self.length)).map_err(err)?;
        file.write_all(&self.buffer).map_err(err)?;
        file.sync_data().map_err(err)?;
        self.length += self.buffer.len() as u64;
        self.last = Some(last.position);
        self.record().map_err(err)
    }
}
