//! Records copied out of the ring buffer into one contiguous buffer: one allocation per drain,
//! not per record.

use bytes::{Bytes, BytesMut};

#[derive(Default)]
pub struct RecordBatch {
    buf: BytesMut,
    ends: Vec<usize>,
}

impl RecordBatch {
    pub fn push(&mut self, record: &[u8]) {
        self.buf.extend_from_slice(record);
        self.ends.push(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Hands out the records collected so far and starts an empty batch.
    pub fn take(&mut self) -> Records {
        Records {
            bytes: self.buf.split().freeze(),
            ends: std::mem::take(&mut self.ends),
            next: 0,
            start: 0,
        }
    }
}

/// An iterator over one batch's records, each a cheap slice of the shared buffer.
pub struct Records {
    bytes: Bytes,
    ends: Vec<usize>,
    next: usize,
    start: usize,
}

impl Iterator for Records {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let end = *self.ends.get(self.next)?;
        let record = self.bytes.slice(self.start..end);
        self.next += 1;
        self.start = end;
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_whole_and_in_order() {
        let mut batch = RecordBatch::default();
        batch.push(b"first");
        batch.push(b"");
        batch.push(b"third record");
        assert_eq!(batch.len(), 3);
        let records: Vec<Bytes> = batch.take().collect();
        assert_eq!(records, [&b"first"[..], b"", b"third record"]);
        assert!(batch.is_empty(), "take() leaves an empty batch");
        batch.push(b"again");
        assert_eq!(batch.take().collect::<Vec<_>>(), [&b"again"[..]]);
    }
}
