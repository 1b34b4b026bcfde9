//! The tracked sockets: one hash table of boxed tracks, each keyed by the identity it holds
//! and hashed by the socket's kernel address alone. The lives of one address share a probe
//! sequence, so the seen-born life at an address is found without a second table, and a
//! bucket is one pointer: 9 bytes a bucket instead of the 50 bytes per socket that a map
//! from identity to track plus a map from address to identity took.

use std::hash::BuildHasher as _;

use connwatch_common::socket::BIRTH_ADOPTED;
use hashbrown::HashTable;

use super::track::Track;
use crate::decode::SockId;

/// Keys are kernel addresses, not chosen by anyone: foldhash rather than SipHash.
type FastHash = foldhash::fast::RandomState;

#[derive(Default)]
pub struct Tracks {
    table: HashTable<Box<Track>>,
    hasher: FastHash,
}

impl Tracks {
    fn hash(&self, addr: u64) -> u64 {
        self.hasher.hash_one(addr)
    }

    pub fn get(&self, sock: &SockId) -> Option<&Track> {
        self.table.find(self.hash(sock.addr), |t| t.sock == *sock).map(|t| &**t)
    }

    pub fn get_mut(&mut self, sock: &SockId) -> Option<&mut Track> {
        let hash = self.hash(sock.addr);
        self.table.find_mut(hash, |t| t.sock == *sock).map(|t| &mut **t)
    }

    pub fn contains(&self, sock: &SockId) -> bool {
        self.get(sock).is_some()
    }

    /// The track of `sock`, made by `new` if there is none.
    pub fn get_or_insert_with(&mut self, sock: SockId, new: impl FnOnce() -> Track) -> &mut Track {
        let hash = self.hash(sock.addr);
        let hasher = &self.hasher;
        let entry = self.table.entry(hash, |t| t.sock == sock, |t| hasher.hash_one(t.sock.addr));
        entry.or_insert_with(|| Box::new(new())).into_mut()
    }

    pub fn remove(&mut self, sock: &SockId) -> bool {
        let hash = self.hash(sock.addr);
        self.table.find_entry(hash, |t| t.sock == *sock).map(|e| e.remove()).is_ok()
    }

    /// The newest tracked life at `addr` whose birth the kernel saw (not adopted).
    pub fn seen_born_at(&self, addr: u64) -> Option<SockId> {
        self.table
            .iter_hash(self.hash(addr))
            .filter(|t| t.sock.addr == addr && t.sock.birth_ns & BIRTH_ADOPTED == 0)
            .map(|t| t.sock)
            .max_by_key(|sock| sock.birth_ns)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Track> {
        self.table.iter().map(|t| &**t)
    }
}

#[cfg(test)]
mod tests {
    use super::Tracks;
    use crate::correlate::track::Track;
    use crate::decode::{Detail, Event, Family, SockId, TcpState};

    fn track(addr: u64, birth_ns: u64) -> Track {
        let any = "127.0.0.1:1".parse().expect("literal");
        Track::new(&Event {
            ts_ns: 1,
            until_ns: 1,
            owner: None,
            sock: SockId { addr, birth_ns },
            family: Family::Inet,
            local: any,
            remote: any,
            detail: Detail::Destroy { state: TcpState::new(7).expect("CLOSE") },
        })
    }

    #[test]
    fn lives_at_one_address_are_kept_apart() {
        let mut tracks = Tracks::default();
        let (old, new, adopted) = (
            SockId { addr: 7, birth_ns: 10 },
            SockId { addr: 7, birth_ns: 20 },
            SockId { addr: 7, birth_ns: 31 },
        );
        for sock in [old, new, adopted] {
            tracks.get_or_insert_with(sock, || track(sock.addr, sock.birth_ns));
        }
        tracks.get_or_insert_with(new, || panic!("already tracked"));
        assert_eq!(tracks.len(), 3);
        assert_eq!(tracks.seen_born_at(7), Some(new), "the newest seen-born life");
        assert_eq!(tracks.seen_born_at(8), None);
        assert!(tracks.remove(&new));
        assert!(!tracks.remove(&new));
        assert_eq!(tracks.seen_born_at(7), Some(old));
        assert!(tracks.contains(&adopted) && tracks.get(&old).is_some_and(|t| t.sock == old));
    }
}
