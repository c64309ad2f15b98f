//! [`SourcePosition`]: where a change sits in its source. One type for the whole project: the
//! CDC connectors read it from Debezium's `source` block, the image pipeline keeps it per
//! product, and the idempotency store guards updates with it.

use serde::{Deserialize, Serialize};

/// Where a change sits in its source, totally ordered: compared as `(seconds, ord)`.
///
/// For MongoDB CDC, the change's cluster time: whole seconds since the epoch (Debezium's
/// `source.ts_ms / 1000`) and the increment within that second (`source.ord`). Events of one
/// multi-document transaction share one position; across transactions and single writes, a
/// greater position is a later change. For a Kafka partition, [`SourcePosition::offset`].
///
/// # Example
///
/// ```
/// use state::SourcePosition;
/// assert!(SourcePosition::new(1_700_000_000, 2) > SourcePosition::new(1_700_000_000, 1));
/// assert!(SourcePosition::new(1_700_000_001, 0) > SourcePosition::new(1_700_000_000, 9));
/// let p = SourcePosition::offset(42);
/// assert_eq!(SourcePosition::from_bytes(&p.to_bytes()), Some(p));
/// assert!(SourcePosition::new(-1, 0).to_bytes() < SourcePosition::new(0, 0).to_bytes());
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct SourcePosition {
    /// Cluster time, whole seconds since the epoch (or an offset).
    pub seconds: i64,
    /// Increment within that second (0 when unused).
    pub ord: i32,
}

impl SourcePosition {
    /// A position from its two components.
    pub const fn new(seconds: i64, ord: i32) -> Self {
        SourcePosition { seconds, ord }
    }

    /// A position that is a single offset (e.g. a Kafka offset).
    pub const fn offset(offset: i64) -> Self {
        SourcePosition::new(offset, 0)
    }

    /// The stored form: 12 big-endian bytes with the sign bits flipped, so stored bytes compare
    /// like the positions.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&((self.seconds as u64) ^ (1 << 63)).to_be_bytes());
        b[8..].copy_from_slice(&((self.ord as u32) ^ (1 << 31)).to_be_bytes());
        b
    }

    /// Parses the stored form; `None` unless exactly 12 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let seconds: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let ord: [u8; 4] = bytes.get(8..)?.try_into().ok()?;
        Some(SourcePosition::new(
            (u64::from_be_bytes(seconds) ^ (1 << 63)) as i64,
            (u32::from_be_bytes(ord) ^ (1 << 31)) as i32,
        ))
    }
}

impl std::fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seconds, self.ord)
    }
}
