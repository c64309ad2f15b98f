//! The source's typed errors.

use crate::debezium::EncodeError;

use super::sink::SinkError;

/// Why the source stopped (or, for the transient kinds, why it is retrying).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid MongoDB source configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// MongoDB failed.
    #[error("mongodb {operation} on {namespace}: {source}")]
    Mongo {
        /// What was being done (`connect`, `watch`, `snapshot`, `next change`).
        operation: &'static str,
        /// `db.collection`.
        namespace: String,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// The change stream ended for good: the collection or database was dropped or renamed, or
    /// the stream was invalidated. Resuming is impossible; re-snapshot after fixing the cause
    /// (delete the stored offset).
    #[error(
        "change stream on {namespace} ended by a {event} event: the source stopped (re-snapshot needed)"
    )]
    Invalidated {
        /// `db.collection`.
        namespace: String,
        /// The event type (`drop`, `rename`, `dropDatabase`, `invalidate`).
        event: String,
    },
    /// The stored resume token is no longer in the oplog (or not accepted): events were lost to
    /// the source, which stops rather than skip them.
    #[error(
        "cannot resume the change stream on {namespace} from the stored token: {source} (delete the stored offset to re-snapshot)"
    )]
    ResumeLost {
        /// `db.collection`.
        namespace: String,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// A change event lacks what a Debezium record needs.
    #[error("malformed change event on {namespace}: {reason}")]
    Malformed {
        /// `db.collection`.
        namespace: String,
        /// What is missing.
        reason: String,
    },
    /// The event could not be encoded.
    #[error("encoding a change of {namespace}: {source}")]
    Encode {
        /// `db.collection`.
        namespace: String,
        /// The encoder's error.
        #[source]
        source: EncodeError,
    },
    /// The Avro serde failed (registry unreachable, schema rejected).
    #[error("serializing for topic {topic}: {source}")]
    Serde {
        /// Topic.
        topic: String,
        /// The serde's error.
        #[source]
        source: topology::serdes::SerdeError,
    },
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The offset store failed.
    #[error("offset store: {0}")]
    State(#[from] state::StateError),
    /// A stored resume token could not be read back.
    #[error("stored resume token of {key} is corrupt: {reason}")]
    CorruptOffset {
        /// The offset key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl SourceError {
    /// Whether retrying (after a backoff, from the last stored position) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Mongo { source, .. } => !is_fatal_mongo(source),
            SourceError::Sink(SinkError::Config(_)) => false,
            SourceError::Sink(_) => true,
            SourceError::Serde { source, .. } => {
                matches!(source, topology::serdes::SerdeError::Registry(_))
            }
            _ => false,
        }
    }
}

/// MongoDB errors no retry can fix: bad arguments, authentication, and the change-stream codes
/// that mean the resume point is gone.
pub(crate) fn is_fatal_mongo(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InvalidArgument { .. } | ErrorKind::Authentication { .. } => true,
        ErrorKind::Command(c) => is_fatal_code(c.code),
        _ => false,
    }
}

/// Codes meaning the stored resume point cannot be used.
pub(crate) fn is_resume_lost(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Command(c) if matches!(c.code, 260 | 280 | 286)
    )
}

fn is_fatal_code(code: i32) -> bool {
    // 13 Unauthorized, 18 AuthenticationFailed, 260 InvalidResumeToken,
    // 280 ChangeStreamFatalError, 286 ChangeStreamHistoryLost.
    matches!(code, 13 | 18 | 260 | 280 | 286)
}
