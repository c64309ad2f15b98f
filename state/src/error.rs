//! The crate's error type: every variant names the store (sled tree) and the operation that
//! failed, so a log line says where to look without a backtrace.

use std::path::PathBuf;

/// A boxed error returned by a [`ChangelogSink`](crate::ChangelogSink) implementation.
pub type SinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The sled database could not be opened.
    #[error("cannot open state directory {}: {source}", path.display())]
    Open {
        /// The directory given to [`StateConfig`](crate::StateConfig).
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A sled operation on one store failed (I/O, corruption, unsupported).
    #[error("state store `{store}`: {op} failed: {source}")]
    Storage {
        /// The sled tree name.
        store: String,
        /// The operation, e.g. `get`, `insert`, `transaction`.
        op: &'static str,
        /// What sled said.
        source: sled::Error,
    },
    /// A key or value could not be serialized.
    #[error("state store `{store}`: cannot encode {what}: {source}")]
    Encode {
        /// The sled tree name.
        store: String,
        /// `key` or `value`.
        what: &'static str,
        /// What the codec said.
        source: postcard::Error,
    },
    /// Stored bytes could not be deserialized into the store's key or value type.
    #[error("state store `{store}`: cannot decode {what} at key {key}: {source}")]
    Decode {
        /// The sled tree name.
        store: String,
        /// `key` or `value`.
        what: &'static str,
        /// The raw key, escaped and truncated for display.
        key: String,
        /// What the codec said.
        source: postcard::Error,
    },
    /// Stored bytes have a layout this crate does not understand.
    #[error("state store `{store}`: corrupt entry at key {key}: {detail}")]
    Corrupt {
        /// The sled tree name.
        store: String,
        /// The raw key, escaped and truncated for display.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The changelog sink refused a committed write. The local write **is** committed.
    #[error("state store `{store}`: changelog sink failed after commit of key {key}: {source}")]
    Changelog {
        /// The sled tree name.
        store: String,
        /// The raw key, escaped and truncated for display.
        key: String,
        /// What the sink said.
        source: SinkError,
    },
    /// `restore_from` was called on a store that already holds data.
    #[error("state store `{store}`: restore refused, the local store already has {len} entries")]
    RestoreNotEmpty {
        /// The sled tree name.
        store: String,
        /// How many entries it holds.
        len: usize,
    },
    /// An operation inside a [`Transaction`](crate::Transaction) named a store that was not
    /// listed when the transaction started.
    #[error("state store `{store}` is not part of this transaction (listed: {listed:?})")]
    NotInTransaction {
        /// The sled tree name.
        store: String,
        /// The trees the transaction was opened on.
        listed: Vec<String>,
    },
    /// A concurrent transaction touched the same keys; the transaction is retried
    /// automatically, callers only see this if they swallow it inside their closure.
    #[error("state store `{store}`: transaction conflict (retried automatically)")]
    Conflict {
        /// The sled tree name.
        store: String,
    },
    /// A store name is empty, too long or uses characters other than `[A-Za-z0-9_.-]`.
    #[error("invalid state store name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A filesystem operation around the database (compaction copy) failed.
    #[error("state directory {}: {op} failed: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Renders a raw key for error messages: printable ASCII kept, the rest escaped, at most 64
/// bytes shown.
pub(crate) fn show_key(key: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s: String = key
        .iter()
        .take(MAX)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if key.len() > MAX {
        s.push_str(&format!("…(+{} bytes)", key.len() - MAX));
    }
    format!("\"{s}\"")
}

pub(crate) fn storage(store: &str, op: &'static str) -> impl FnOnce(sled::Error) -> StateError {
    let store = store.to_owned();
    move |source| StateError::Storage { store, op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_key_escapes_and_truncates() {
        assert_eq!(show_key(b"a\x00b"), "\"a\\x00b\"");
        let long = vec![b'x'; 70];
        assert!(show_key(&long).ends_with("…(+6 bytes)\""));
    }
}
