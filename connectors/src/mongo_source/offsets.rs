//! The durable position of the source: a resume token (or a start time) per server name and
//! collection, in a sled tree of the `state` crate.

use mongodb::bson::{self, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use serde::{Deserialize, Serialize};
use state::{KvStore, StateDir};

use super::error::SourceError;

/// The name of the sled tree holding the offsets.
pub const OFFSETS_STORE: &str = "mongo-source-offsets";

/// Where to resume: after a change-stream resume token, or at a cluster time (a start point
/// recorded before a snapshot when the server gave no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    /// The BSON bytes of `{"t": <resume token>}`.
    pub resume_token: Option<Vec<u8>>,
    /// `(seconds, increment)` to pass as `startAtOperationTime`.
    pub operation_time: Option<(u32, u32)>,
}

#[derive(Serialize, Deserialize)]
struct TokenBox {
    t: ResumeToken,
}

/// Where the stream starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StartPoint {
    /// `resumeAfter`.
    Token(ResumeToken),
    /// `startAtOperationTime`.
    Time(Timestamp),
}

impl StartPoint {
    pub(crate) fn to_stored(&self) -> Result<StoredOffset, String> {
        Ok(match self {
            StartPoint::Token(t) => StoredOffset {
                resume_token: Some(
                    bson::to_vec(&TokenBox { t: t.clone() }).map_err(|e| e.to_string())?,
                ),
                operation_time: None,
            },
            StartPoint::Time(ts) => StoredOffset {
                resume_token: None,
                operation_time: Some((ts.time, ts.increment)),
            },
        })
    }

    fn from_stored(stored: &StoredOffset) -> Result<Option<Self>, String> {
        if let Some(bytes) = &stored.resume_token {
            let token: TokenBox = bson::from_slice(bytes).map_err(|e| e.to_string())?;
            return Ok(Some(StartPoint::Token(token.t)));
        }
        Ok(stored
            .operation_time
            .map(|(time, increment)| StartPoint::Time(Timestamp { time, increment })))
    }
}

/// The offsets of one source.
pub(crate) struct Offsets {
    dir: StateDir,
    store: KvStore<String, StoredOffset>,
    key: String,
    last: Option<StartPoint>,
    dirty: bool,
}

impl Offsets {
    pub(crate) fn open(dir: StateDir, key: String) -> Result<Self, SourceError> {
        let store = dir.store(OFFSETS_STORE)?;
        Ok(Offsets {
            dir,
            store,
            key,
            last: None,
            dirty: false,
        })
    }

    /// The stored start point, if any.
    pub(crate) fn load(&mut self) -> Result<Option<StartPoint>, SourceError> {
        let point = match self.store.get(&self.key)? {
            None => None,
            Some(stored) => {
                StartPoint::from_stored(&stored).map_err(|reason| SourceError::CorruptOffset {
                    key: self.key.clone(),
                    reason,
                })?
            }
        };
        self.last = point.clone();
        Ok(point)
    }

    /// Records `point` (call only once everything before it is acknowledged).
    pub(crate) fn store(&mut self, point: StartPoint) -> Result<(), SourceError> {
        if self.last.as_ref() == Some(&point) {
            return Ok(());
        }
        let stored = point
            .to_stored()
            .map_err(|reason| SourceError::CorruptOffset {
                key: self.key.clone(),
                reason,
            })?;
        self.store.put(&self.key, &stored)?;
        self.last = Some(point);
        self.dirty = true;
        Ok(())
    }

    /// The last start point loaded or stored.
    pub(crate) fn last(&self) -> Option<&StartPoint> {
        self.last.as_ref()
    }

    /// Makes stored offsets durable (sled also flushes on its own every 500 ms).
    pub(crate) fn flush(&mut self) -> Result<(), SourceError> {
        if self.dirty {
            self.dir.flush()?;
            self.dirty = false;
        }
        Ok(())
    }
}
