//! A socket's notable events in time order, kept as bytes ([`codec`]): a held connection's
//! three events take about 30 bytes instead of 192, and a finished one's dozen about 150
//! instead of 768. Entries are decoded only to report a finding or to look back.

mod codec;

use super::room;
use crate::decode::Detail;

/// At most this many events per socket (the earliest anchors stay).
pub const MOST: usize = 12;
/// Room for a held connection's first events (its opening and handshake: about 30 bytes),
/// then doubled.
const FIRST_BYTES: usize = 40;

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// Entries in time order, each its length (one byte) followed by its encoding; a zero
    /// length (or the end) ends them, and every byte after the last entry is zero.
    bytes: Box<[u8]>,
    /// The time entries are written relative to (the first one recorded).
    base: u64,
}

impl Timeline {
    /// Inserts in time order; when full, the newest events replace the latest but the earliest
    /// anchors (FIN, connect, first error) stay.
    pub fn record(&mut self, ts: u64, until: u64, detail: &Detail) {
        if self.bytes.first().is_none_or(|&len| len == 0) {
            self.base = ts;
        }
        let (mut used, mut count, mut last) = (0, 0, None);
        for (start, end) in self.entries() {
            (used, count, last) = (end, count + 1, Some((start, end)));
        }
        // Events nearly always come in time order: only the newest entry's time is read then.
        let (mut at, index) = match last {
            Some((start, end)) if codec::entry_ts(&self.bytes[start..end], self.base) > ts => {
                let (at, index) = self.later_than(ts);
                (at, Some(index))
            }
            _ => (used, None),
        };
        if count >= MOST {
            if index.unwrap_or(count) < MOST / 2 {
                return;
            }
            let (start, end) = self.entries().nth(MOST / 2).expect("the timeline is full");
            let removed = end - start + 1;
            self.bytes.copy_within(end..used, start - 1);
            self.bytes[used - removed..used].fill(0);
            used -= removed;
            if at >= end {
                at -= removed;
            }
        }
        let entry = codec::encode(self.base, ts, until, detail);
        let entry = entry.bytes();
        let len = u8::try_from(entry.len()).expect("an entry encodes in under 256 bytes");
        room::make_room(&mut self.bytes, used, entry.len() + 1, FIRST_BYTES);
        self.bytes.copy_within(at..used, at + entry.len() + 1);
        self.bytes[at] = len;
        self.bytes[at + 1..=at + entry.len()].copy_from_slice(entry);
    }

    /// Where the first entry later than `ts` begins (its length byte), and its index.
    fn later_than(&self, ts: u64) -> (usize, usize) {
        let mut entries = self.entries().enumerate();
        let found = entries
            .find(|&(_, (start, end))| codec::entry_ts(&self.bytes[start..end], self.base) > ts);
        let (index, (start, _)) = found.expect("the newest entry is later than ts");
        (start - 1, index)
    }

    /// No entries, with the room they had.
    pub fn emptied(mut self) -> Self {
        self.bytes.fill(0);
        Self { bytes: self.bytes, base: 0 }
    }

    /// `(from, until, what)`, in time order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Detail)> + '_ {
        self.entries().map(|(start, end)| codec::entry(&self.bytes[start..end], self.base))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// Each entry's encoding, as a byte range (after its length byte).
    fn entries(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let len = usize::from(*self.bytes.get(at)?);
            if len == 0 {
                return None;
            }
            let entry = (at + 1, at + 1 + len);
            at = entry.1;
            Some(entry)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{MOST, Timeline};
    use crate::decode::{Detail, TcpState};

    fn marker(n: u8) -> Detail {
        // Distinct, decodable details: the state numbers 1..=12 stand for the events.
        Detail::Destroy { state: TcpState::new(n % 12 + 1).unwrap() }
    }

    fn times(t: &Timeline) -> Vec<u64> {
        t.iter().map(|(ts, _, _)| ts).collect()
    }

    #[test]
    fn entries_keep_time_order_whatever_order_they_arrive_in() {
        let mut t = Timeline::default();
        for (i, ts) in [50u64, 10, 70, 30, 30, 5].into_iter().enumerate() {
            t.record(ts, ts + 1, &marker(i as u8));
        }
        assert_eq!(times(&t), [5, 10, 30, 30, 50, 70]);
        // Equal times keep their arrival order.
        let at_30: Vec<Detail> = t.iter().filter(|e| e.0 == 30).map(|e| e.2).collect();
        assert_eq!(at_30, [marker(3), marker(4)]);
        assert!(t.iter().all(|(ts, until, _)| until == ts + 1));
    }

    #[test]
    fn an_emptied_timeline_keeps_its_room_and_no_entry() {
        let mut t = Timeline::default();
        for ts in [50u64, 10, 70] {
            t.record(ts, ts, &marker(1));
        }
        let room = t.bytes.len();
        let mut t = t.emptied();
        assert_eq!((t.bytes.len(), t.iter().count()), (room, 0));
        // Times are kept relative to the new first entry, as in a new timeline: as compact.
        let mut new = Timeline::default();
        for (i, ts) in [5_000_000_000u64, 4_000_000_000].into_iter().enumerate() {
            t.record(ts, ts + 1, &marker(i as u8));
            new.record(ts, ts + 1, &marker(i as u8));
        }
        assert_eq!(times(&t), [4_000_000_000, 5_000_000_000]);
        assert_eq!(t.bytes[..new.bytes.len()], new.bytes[..]);
    }

    #[test]
    fn a_full_timeline_keeps_its_earliest_half_and_its_newest() {
        let mut t = Timeline::default();
        for ts in 1..=MOST as u64 {
            t.record(ts * 10, ts * 10, &marker(ts as u8));
        }
        // Later than all: replaces the entry after the anchors.
        t.record(1_000, 1_000, &marker(0));
        let mut expected: Vec<u64> = (1..=MOST as u64).map(|ts| ts * 10).collect();
        expected.remove(MOST / 2);
        expected.push(1_000);
        assert_eq!(times(&t), expected);
        // Earlier than the anchors' half: dropped.
        t.record(15, 15, &marker(0));
        assert_eq!(times(&t), expected);
        // Among the later half: kept in order.
        t.record(95, 95, &marker(0));
        expected.remove(MOST / 2);
        expected.insert(expected.iter().position(|&ts| ts > 95).unwrap(), 95);
        assert_eq!(times(&t), expected);
        assert_eq!(t.len(), MOST);
    }
}
