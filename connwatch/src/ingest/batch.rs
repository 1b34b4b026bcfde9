//! Records copied out of the ring buffer into one contiguous, reused buffer: no allocation
//! per record, and none per drain once the buffer has grown to a drain's size.

use bytes::BytesMut;

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

    /// The records collected since the last [`Self::clear`], in order, each a slice of the
    /// shared buffer (lent, not reference-counted: `perf` found the counting at 4% of
    /// connwatch's CPU under churn).
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| &self.buf[start..end])
    }

    /// Empties the batch, keeping its buffers' room.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
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
        let records: Vec<&[u8]> = batch.records().collect();
        assert_eq!(records, [&b"first"[..], b"", b"third record"]);
        batch.clear();
        assert!(batch.is_empty() && batch.records().next().is_none(), "clear() empties it");
        batch.push(b"again");
        assert_eq!(batch.records().collect::<Vec<_>>(), [&b"again"[..]]);
    }
}
