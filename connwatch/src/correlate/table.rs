//! The tracked sockets, in two hash tables of boxed tracks, each track keyed by the identity it
//! holds (a bucket is one pointer):
//! - `current`: the newest life the kernel saw born at each socket address (plus lives it
//!   adopted later there), hashed by the address alone, so an adopted identity finds the
//!   seen-born life at its address without a second index;
//! - `older`: every life that a newer birth at the same address has ended (under churn, the
//!   kernel reuses a freed socket's memory within microseconds, and finished lives stay for
//!   the reorder window), hashed by the whole identity. Hashed by address, hundreds of them
//!   shared one probe sequence, and every lookup walked it.

use std::hash::BuildHasher as _;

use connwatch_common::socket::BIRTH_ADOPTED;
use hashbrown::HashTable;

use super::track::Track;
use crate::decode::SockId;

/// Keys are kernel addresses and times, not chosen by anyone: foldhash rather than SipHash.
type FastHash = foldhash::fast::RandomState;

#[derive(Default)]
pub struct Tracks {
    current: HashTable<Box<Track>>,
    older: HashTable<Box<Track>>,
    hasher: FastHash,
}

fn seen_born(sock: &SockId) -> bool {
    sock.birth_ns & BIRTH_ADOPTED == 0
}

impl Tracks {
    fn by_addr(&self, addr: u64) -> u64 {
        self.hasher.hash_one(addr)
    }

    fn by_id(&self, sock: &SockId) -> u64 {
        self.hasher.hash_one(sock)
    }

    pub fn get(&self, sock: &SockId) -> Option<&Track> {
        let found = self.current.find(self.by_addr(sock.addr), |t| t.sock == *sock);
        found.or_else(|| self.older.find(self.by_id(sock), |t| t.sock == *sock)).map(|t| &**t)
    }

    pub fn get_mut(&mut self, sock: &SockId) -> Option<&mut Track> {
        let (by_addr, by_id) = (self.by_addr(sock.addr), self.by_id(sock));
        match self.current.find_mut(by_addr, |t| t.sock == *sock) {
            Some(t) => Some(&mut **t),
            None => self.older.find_mut(by_id, |t| t.sock == *sock).map(|t| &mut **t),
        }
    }

    pub fn contains(&self, sock: &SockId) -> bool {
        self.get(sock).is_some()
    }

    /// The track of `sock`, made by `new` if there is none.
    pub fn get_or_insert_with(&mut self, sock: SockId, new: impl FnOnce() -> Track) -> &mut Track {
        let (by_addr, by_id) = (self.by_addr(sock.addr), self.by_id(&sock));
        // By bucket index: a reference returned from the lookup would hold the tables borrowed
        // on the path that inserts.
        if let Some(at) = self.current.find_bucket_index(by_addr, |t| t.sock == sock) {
            return self.current.get_bucket_mut(at).expect("just found");
        }
        if let Some(at) = self.older.find_bucket_index(by_id, |t| t.sock == sock) {
            return self.older.get_bucket_mut(at).expect("just found");
        }
        let track = Box::new(new());
        let newer_at_addr = seen_born(&sock) && self.end_lives_before(sock);
        let hasher = &self.hasher;
        let entry = if newer_at_addr {
            self.older.insert_unique(hasher.hash_one(sock), track, |t| hasher.hash_one(t.sock))
        } else {
            let by_addr = hasher.hash_one(sock.addr);
            self.current.insert_unique(by_addr, track, |t| hasher.hash_one(t.sock.addr))
        };
        entry.into_mut()
    }

    /// A life born at `sock.birth_ns`: every current life at its address born before it has
    /// ended (the kernel reused the memory) and moves to `older`. Returns whether a current
    /// life there is newer still (`sock`'s events came late), so `sock` itself is older.
    fn end_lives_before(&mut self, sock: SockId) -> bool {
        let by_addr = self.by_addr(sock.addr);
        let mut newer = false;
        while let Ok(entry) = self.current.find_entry(by_addr, |t| {
            newer |=
                t.sock.addr == sock.addr && seen_born(&t.sock) && t.sock.birth_ns > sock.birth_ns;
            t.sock.addr == sock.addr && t.sock.birth_ns < sock.birth_ns
        }) {
            let (ended, _) = entry.remove();
            let hasher = &self.hasher;
            let hash = hasher.hash_one(ended.sock);
            self.older.insert_unique(hash, ended, |t| hasher.hash_one(t.sock));
        }
        newer
    }

    pub fn remove(&mut self, sock: &SockId) -> bool {
        let (by_addr, by_id) = (self.by_addr(sock.addr), self.by_id(sock));
        match self.current.find_entry(by_addr, |t| t.sock == *sock) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => self.older.find_entry(by_id, |t| t.sock == *sock).map(|e| e.remove()).is_ok(),
        }
    }

    /// The newest tracked life at `addr` whose birth the kernel saw (not adopted).
    pub fn seen_born_at(&self, addr: u64) -> Option<SockId> {
        self.current
            .iter_hash(self.by_addr(addr))
            .filter(|t| t.sock.addr == addr && seen_born(&t.sock))
            .map(|t| t.sock)
            .max_by_key(|sock| sock.birth_ns)
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.older.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Track> {
        self.current.iter().chain(self.older.iter()).map(|t| &**t)
    }
}

#[cfg(test)]
mod tests {
    use super::Tracks;
    use crate::correlate::track::Track;
    use crate::decode::{Detail, Event, Family, SockId, TcpState};

    fn track(sock: SockId) -> Track {
        let any = "127.0.0.1:1".parse().expect("literal");
        Track::new(&Event {
            ts_ns: 1,
            until_ns: 1,
            owner: None,
            sock,
            family: Family::Inet,
            local: any,
            remote: any,
            detail: Detail::Destroy { state: TcpState::new(7).expect("CLOSE") },
        })
    }

    fn insert(tracks: &mut Tracks, sock: SockId) {
        tracks.get_or_insert_with(sock, || track(sock));
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
            insert(&mut tracks, sock);
        }
        tracks.get_or_insert_with(new, || panic!("already tracked"));
        assert_eq!(tracks.len(), 3);
        assert_eq!(tracks.seen_born_at(7), Some(new), "the newest seen-born life");
        assert_eq!(tracks.seen_born_at(8), None);
        assert!(tracks.remove(&new));
        assert!(!tracks.remove(&new));
        assert!(tracks.contains(&adopted) && tracks.get(&old).is_some_and(|t| t.sock == old));
        assert!(tracks.remove(&old) && tracks.remove(&adopted) && tracks.len() == 0);
    }

    #[test]
    fn an_old_life_arriving_late_stays_behind_the_newer_one() {
        let mut tracks = Tracks::default();
        let (old, new) = (SockId { addr: 7, birth_ns: 10 }, SockId { addr: 7, birth_ns: 20 });
        insert(&mut tracks, new);
        insert(&mut tracks, old);
        assert_eq!(tracks.seen_born_at(7), Some(new));
        assert!(tracks.get_mut(&old).is_some() && tracks.get_mut(&new).is_some());
    }

    #[test]
    fn an_address_reused_many_times_keeps_one_current_life() {
        let mut tracks = Tracks::default();
        for birth in 1..=1_000u64 {
            insert(&mut tracks, SockId { addr: 7, birth_ns: birth * 2 });
        }
        let at_7 = tracks.current.iter_hash(tracks.by_addr(7)).filter(|t| t.sock.addr == 7);
        assert_eq!(at_7.count(), 1, "ended lives leave the address's probe sequence");
        assert_eq!(tracks.seen_born_at(7), Some(SockId { addr: 7, birth_ns: 2_000 }));
        assert_eq!(tracks.len(), 1_000);
        assert!((1..=1_000u64).all(|b| tracks.contains(&SockId { addr: 7, birth_ns: b * 2 })));
    }
}
