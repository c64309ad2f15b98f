//! The stored layout of idempotency records: ids grouped in small blocks.
//!
//! sled 0.34 splits a leaf every 16 entries and rewrites its parent index node on each split,
//! so its cost per write is mostly per *entry*, not per byte: an insert of a fresh key into a
//! growing tree costs about twice a rewrite of an existing small value. Idempotency ids come in
//! runs (consecutive offsets of one partition), so up to [`SLOTS`] ids that differ only in the
//! low 4 bits of their last byte share one sled entry:
//!
//! - key: the id with the low nibble of its last byte cleared (the empty id maps to the empty
//!   key); keys keep the ids' byte order, so iteration still follows the ids.
//! - value: entries sorted by slot (that low nibble), each `slot: u8`, `len: LEB128`, `len`
//!   bytes of record (8 bytes big-endian recorded-at milliseconds, then the postcard outcome).
//!
//! A check-and-record is still one atomic sled write (a compare-and-swap of the block, or a
//! write inside a transaction), so durability and atomicity are those of any other write.

use crate::error::{Result, StateError, show_key};

/// Ids per block: the low 4 bits of the last byte.
pub(crate) const SLOTS: usize = 16;
const SLOT_MASK: u8 = (SLOTS - 1) as u8;

/// The block key of `id` and its slot in the block.
pub(crate) fn locate(id: &[u8]) -> (Vec<u8>, u8) {
    let mut key = id.to_vec();
    match key.last_mut() {
        Some(last) => {
            let slot = *last & SLOT_MASK;
            *last &= !SLOT_MASK;
            (key, slot)
        }
        None => (key, 0),
    }
}

/// The id stored at `slot` of the block `key`.
pub(crate) fn id_of(key: &[u8], slot: u8) -> Vec<u8> {
    let mut id = key.to_vec();
    if let Some(last) = id.last_mut() {
        *last |= slot;
    }
    id
}

/// Iterates over the `(slot, record)` entries of a stored block, checking its layout.
pub(crate) struct Entries<'a> {
    store: &'a str,
    key: &'a [u8],
    rest: &'a [u8],
}

pub(crate) fn entries<'a>(store: &'a str, key: &'a [u8], block: &'a [u8]) -> Entries<'a> {
    Entries {
        store,
        key,
        rest: block,
    }
}

impl<'a> Entries<'a> {
    fn corrupt(&mut self, detail: &str) -> StateError {
        self.rest = &[];
        StateError::Corrupt {
            store: self.store.to_owned(),
            key: show_key(self.key),
            detail: format!("record block: {detail}"),
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u8, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&slot, mut rest) = self.rest.split_first()?;
        if slot > SLOT_MASK {
            return Some(Err(self.corrupt(&format!("slot {slot} out of range"))));
        }
        let mut len: u64 = 0;
        let mut shift = 0;
        loop {
            let Some((&b, tail)) = rest.split_first() else {
                return Some(Err(self.corrupt("truncated length")));
            };
            rest = tail;
            if shift > 28 {
                return Some(Err(self.corrupt("length too long")));
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let Some(record) = usize::try_from(len).ok().and_then(|l| rest.get(..l)) else {
            return Some(Err(self.corrupt("truncated record")));
        };
        self.rest = &rest[record.len()..];
        Some(Ok((slot, record)))
    }
}

/// The record at `slot` of `block`.
pub(crate) fn find<'a>(
    store: &'a str,
    key: &'a [u8],
    block: &'a [u8],
    slot: u8,
) -> Result<Option<&'a [u8]>> {
    for entry in entries(store, key, block) {
        let (s, record) = entry?;
        if s == slot {
            return Ok(Some(record));
        }
        if s > slot {
            break;
        }
    }
    Ok(None)
}

fn push_entry(out: &mut Vec<u8>, slot: u8, record: &[u8]) {
    out.push(slot);
    let mut len = record.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(record);
}

/// `block` (or an empty one) with `record` at `slot`, which must be free.
pub(crate) fn with_entry(
    store: &str,
    key: &[u8],
    block: Option<&[u8]>,
    slot: u8,
    record: &[u8],
) -> Result<Vec<u8>> {
    let block = block.unwrap_or_default();
    let mut out = Vec::with_capacity(block.len() + record.len() + 3);
    let mut placed = false;
    for entry in entries(store, key, block) {
        let (s, r) = entry?;
        if !placed && s > slot {
            push_entry(&mut out, slot, record);
            placed = true;
        }
        push_entry(&mut out, s, r);
    }
    if !placed {
        push_entry(&mut out, slot, record);
    }
    Ok(out)
}

/// `block` without the entries `keep` rejects; `None` if nothing is left. Also returns how
/// many were removed.
pub(crate) fn retain(
    store: &str,
    key: &[u8],
    block: &[u8],
    mut keep: impl FnMut(u8, &[u8]) -> Result<bool>,
) -> Result<(Option<Vec<u8>>, usize)> {
    let mut out = Vec::with_capacity(block.len());
    let mut removed = 0;
    for entry in entries(store, key, block) {
        let (s, r) = entry?;
        if keep(s, r)? {
            push_entry(&mut out, s, r);
        } else {
            removed += 1;
        }
    }
    Ok(((!out.is_empty()).then_some(out), removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_and_back() {
        for id in [&b""[..], b"a", b"\x0f", b"\xff", b"cdc:0:17", &[0u8; 40]] {
            let (key, slot) = locate(id);
            assert_eq!(key.len(), id.len());
            assert_eq!(id_of(&key, slot), id);
        }
        assert_eq!(locate(b"ab").0, locate(b"a\x6f").0);
        assert_ne!(locate(b"a").0, locate(b"a\x00").0);
        assert!(locate(b"a\x0f").0 < locate(b"a\x10").0);
    }

    #[test]
    fn entries_sorted_found_and_removed() {
        let long = vec![7u8; 300];
        let mut block: Option<Vec<u8>> = None;
        for (slot, rec) in [(5u8, &b"five"[..]), (1, b""), (9, &long), (0, b"zero")] {
            assert_eq!(
                find("s", b"k", block.as_deref().unwrap_or_default(), slot).expect("block op"),
                None
            );
            block = Some(with_entry("s", b"k", block.as_deref(), slot, rec).expect("block op"));
        }
        let block = block.expect("block op");
        let slots: Vec<u8> = entries("s", b"k", &block)
            .map(|e| e.expect("block op").0)
            .collect();
        assert_eq!(slots, vec![0, 1, 5, 9]);
        assert_eq!(
            find("s", b"k", &block, 9).expect("block op"),
            Some(&long[..])
        );
        assert_eq!(
            find("s", b"k", &block, 5).expect("block op"),
            Some(&b"five"[..])
        );
        assert_eq!(
            find("s", b"k", &block, 1).expect("block op"),
            Some(&b""[..])
        );
        let (rest, removed) = retain("s", b"k", &block, |s, _| Ok(s == 5)).expect("block op");
        assert_eq!(removed, 3);
        let rest = rest.expect("block op");
        assert_eq!(
            find("s", b"k", &rest, 5).expect("block op"),
            Some(&b"five"[..])
        );
        assert_eq!(
            retain("s", b"k", &rest, |_, _| Ok(false)).expect("block op"),
            (None, 1)
        );
    }

    #[test]
    fn corrupt_blocks_are_errors() {
        for bad in [
            &[0x10u8, 0][..],
            &[1],
            &[1, 5, 0],
            &[1, 0x80, 0x80, 0x80, 0x80, 0x80, 1],
        ] {
            assert!(find("s", b"k", bad, 15).is_err(), "{bad:?}");
        }
    }
}
