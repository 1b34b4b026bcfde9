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

/// Forgotten tracks kept whole for new ones. Under churn, tracks are forgotten in bursts at
/// each tick (about 4,000 per 50 ms on 2 CPUs) and made one by one in between; freed, they
/// overflowed glibc's per-thread cache (7 chunks of a size) and nearly every new track, its
/// facts and its timeline took malloc's slow path. A reused track keeps the room its facts and
/// timeline had (emptied), so a new socket's first facts and events allocate nothing. At most
/// about one
/// tick's worth is kept (a pool of 1,024 kept only part of the gain), about 2 MiB, and none
/// once no new track has taken one for a second.
const SPARE_TRACKS: usize = 4096;
const SPARE_IDLE_NS: u64 = 1_000_000_000;

#[derive(Default)]
pub struct Tracks {
    current: HashTable<Box<Track>>,
    older: HashTable<Box<Track>>,
    hasher: FastHash,
    // Boxed: the boxes themselves are what is reused, as the tables' entries.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Track>>,
    /// Whether a new track took a spare one since the last [`Tracks::tidy`].
    spare_taken: bool,
    /// Since when `tidy` has found spares and none taken (`None`: it has not).
    spares_unused_since: Option<u64>,
}

fn seen_born(sock: &SockId) -> bool {
    sock.birth_ns & BIRTH_ADOPTED == 0
}

/// Which of the two tables holds a track.
#[derive(Clone, Copy)]
enum Held {
    Current,
    Older,
}

impl Tracks {
    fn by_addr(&self, addr: u64) -> u64 {
        self.hasher.hash_one(addr)
    }

    fn by_id(&self, sock: &SockId) -> u64 {
        self.hasher.hash_one(sock)
    }

    fn table(&mut self, held: Held) -> &mut HashTable<Box<Track>> {
        match held {
            Held::Current => &mut self.current,
            Held::Older => &mut self.older,
        }
    }

    /// Where `sock`'s track is: its table and bucket.
    fn locate(&self, sock: &SockId) -> Option<(Held, usize)> {
        let is = |t: &Track| t.sock == *sock;
        match self.current.find_bucket_index(self.by_addr(sock.addr), |t| is(t)) {
            Some(at) => Some((Held::Current, at)),
            None => Some((Held::Older, self.older.find_bucket_index(self.by_id(sock), |t| is(t))?)),
        }
    }

    pub fn get(&self, sock: &SockId) -> Option<&Track> {
        let (held, at) = self.locate(sock)?;
        let table = match held {
            Held::Current => &self.current,
            Held::Older => &self.older,
        };
        table.get_bucket(at).map(|t| &**t)
    }

    pub fn get_mut(&mut self, sock: &SockId) -> Option<&mut Track> {
        let (held, at) = self.locate(sock)?;
        self.table(held).get_bucket_mut(at).map(|t| &mut **t)
    }

    pub fn contains(&self, sock: &SockId) -> bool {
        self.locate(sock).is_some()
    }

    /// The track of `sock`, made by `new` if there is none.
    pub fn get_or_insert_with(&mut self, sock: SockId, new: impl FnOnce() -> Track) -> &mut Track {
        if let Some((held, at)) = self.locate(&sock) {
            return self.table(held).get_bucket_mut(at).expect("just found");
        }
        let track = match self.spare.pop() {
            Some(mut spare) => {
                self.spare_taken = true;
                spare.reuse_for(new());
                spare
            }
            None => Box::new(new()),
        };
        if seen_born(&sock) && self.end_lives_before(sock) {
            self.insert(Held::Older, track)
        } else {
            self.insert(Held::Current, track)
        }
    }

    /// Inserts a track not yet in either table.
    fn insert(&mut self, held: Held, track: Box<Track>) -> &mut Track {
        let hasher = self.hasher.clone();
        let hash = move |t: &Track| match held {
            Held::Current => hasher.hash_one(t.sock.addr),
            Held::Older => hasher.hash_one(t.sock),
        };
        let at = hash(&track);
        self.table(held).insert_unique(at, track, move |t| hash(t)).into_mut()
    }

    /// A life born at `sock.birth_ns`: every current life at its address born before it has
    /// ended (the kernel reused the memory) and moves to `older`. Returns whether a current
    /// life there is newer still (`sock`'s events came late), so `sock` itself is older.
    fn end_lives_before(&mut self, sock: SockId) -> bool {
        let by_addr = self.by_addr(sock.addr);
        let at_addr = |t: &Track| t.sock.addr == sock.addr;
        let ended = |t: &Track| at_addr(t) && t.sock.birth_ns < sock.birth_ns;
        while let Ok(entry) = self.current.find_entry(by_addr, |t| ended(t)) {
            let (track, _) = entry.remove();
            self.insert(Held::Older, track);
        }
        self.current
            .iter_hash(by_addr)
            .any(|t| at_addr(t) && seen_born(&t.sock) && t.sock.birth_ns > sock.birth_ns)
    }

    pub fn remove(&mut self, sock: &SockId) -> bool {
        self.remove_if(sock, |_| true)
    }

    /// Removes `sock`'s track if `condition` holds for it; returns whether it did.
    pub fn remove_if(&mut self, sock: &SockId, condition: impl FnOnce(&Track) -> bool) -> bool {
        let Some((held, at)) = self.locate(sock) else {
            return false;
        };
        let Ok(entry) = self.table(held).get_bucket_entry(at) else {
            return false;
        };
        condition(entry.get()) && {
            let (track, _) = entry.remove();
            if self.spare.len() < SPARE_TRACKS {
                self.spare.push(track);
            }
            true
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

    /// Frees the spare tracks once none has been taken for [`SPARE_IDLE_NS`]; called every
    /// tick. The idle time counts from the first tick that finds spares left untaken, not from
    /// the last take: a pool filled by a tick's forgotten tracks serves the tracks born before
    /// the next (counted from the last take, a pool that was empty at the previous tick was
    /// freed by the tick that filled it, and no track was ever reused).
    pub fn tidy(&mut self, now: u64) {
        if std::mem::take(&mut self.spare_taken) || self.spare.is_empty() {
            self.spares_unused_since = None;
        } else if now.saturating_sub(*self.spares_unused_since.get_or_insert(now)) >= SPARE_IDLE_NS
        {
            self.spare = Vec::new();
            self.spares_unused_since = None;
        }
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
    fn a_forgotten_track_is_reused_whole_and_spares_go_after_an_idle_second() {
        let mut tracks = Tracks::default();
        let (gone, new) = (SockId { addr: 7, birth_ns: 10 }, SockId { addr: 9, birth_ns: 20 });
        insert(&mut tracks, gone);
        tracks.get_mut(&gone).expect("tracked").reported = 1;
        assert!(!tracks.remove_if(&gone, |t| t.reported == 0), "the condition holds it back");
        assert!(tracks.remove(&gone));
        assert_eq!(tracks.spare.len(), 1);
        insert(&mut tracks, new);
        assert!(tracks.spare.is_empty(), "the new track took the spare");
        let reused = tracks.get(&new).expect("tracked");
        assert_eq!((reused.sock, reused.reported), (new, 0), "nothing of the old life is left");
        assert!(tracks.get(&gone).is_none());

        tracks.remove(&new);
        tracks.tidy(super::SPARE_IDLE_NS);
        assert_eq!(tracks.spare.len(), 1, "taken since the last tick: kept");
        tracks.tidy(2 * super::SPARE_IDLE_NS);
        assert_eq!(tracks.spare.len(), 1, "untaken since this tick: kept");
        tracks.tidy(3 * super::SPARE_IDLE_NS - 1);
        assert_eq!(tracks.spare.len(), 1, "untaken for less than a second: kept");
        tracks.tidy(3 * super::SPARE_IDLE_NS);
        assert!(tracks.spare.is_empty(), "none taken for a second: freed");
    }

    /// Under churn, each tick forgets the tracks whose quiet time came and tidies after:
    /// the spares it made must last until the new tracks born before the next tick take them.
    #[test]
    fn spares_a_tick_makes_serve_the_tracks_born_after_it() {
        let mut tracks = Tracks::default();
        let tick = super::SPARE_IDLE_NS / 20;
        let an_hour_up = 3_600 * super::SPARE_IDLE_NS;
        for n in 0..3u64 {
            let (old, new) =
                (SockId { addr: 7 + n, birth_ns: 10 }, SockId { addr: 100 + n, birth_ns: 20 });
            insert(&mut tracks, old);
            tracks.tidy(an_hour_up + 2 * n * tick);
            assert!(tracks.remove(&old), "forgotten at the next tick");
            tracks.tidy(an_hour_up + (2 * n + 1) * tick);
            assert_eq!(tracks.spare.len(), 1, "round {n}: the forgotten track is kept");
            insert(&mut tracks, new);
            assert!(tracks.spare.is_empty(), "round {n}: the new track took it");
        }
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
