//! Which live replica owns which event: rendezvous (highest-random-weight) hashing.
//!
//! Every replica that counts as an owner (see [`owner_window`]) is a candidate; the
//! owner of an event is the candidate whose weight for that event is highest. Each
//! replica decides alone, from the same list, with no coordination and no lock:
//! when a replica joins or leaves, only the events it gains or held move (about
//! 1/R of them), the others keep their owner. Ownership only decides who *passes*
//! an event (reaper, outbox claim, admit); the scripts stay atomic and safe for any
//! replica to run, so two replicas that disagree for a moment cost double work,
//! never an invariant.
//!
//! The hash is FNV-1a 64 finished by splitmix64's mixer: fixed here, independent of
//! the Rust version and platform, because replicas of different builds must agree
//! on it (a change would make two versions disagree during a rolling upgrade; the
//! tests pin known values so it cannot change by accident).

use std::time::Duration;

/// How long a replica counts as an owner after its last completed pass: one and a
/// half of its own period (its interval, or its recent passes when they take
/// longer: the time between its beats). Short enough that a killed replica's events
/// move on well within three periods (its last beat + 1.5 periods, then at most one
/// interval until the survivor's next pass reads the list and passes them); long
/// enough that a pass running a little late does not hand its events away (if it
/// does, they are passed twice for a moment: harmless).
pub fn owner_window(period: Duration) -> Duration {
    period.saturating_mul(3) / 2
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a replica id, computed once per list.
fn replica_hash(id: &str) -> u64 {
    mix(fnv1a(id.as_bytes()))
}

/// The weight of replica `r` (its [`replica_hash`]) for an event hashed `e`.
fn weight(e: u64, r: u64) -> u64 {
    mix(e ^ r)
}

/// The owner of `event` among `candidates` (None when there is none). Equal
/// weights (two ids with the same hash) go to the greater id, so every replica
/// still picks the same one.
pub fn owner<'a>(event: &str, candidates: &'a [String]) -> Option<&'a str> {
    let e = fnv1a(event.as_bytes());
    candidates
        .iter()
        .map(|c| (weight(e, replica_hash(c)), c.as_str()))
        .max()
        .map(|(_, c)| c)
}

/// One replica's view: who it is and the other candidates it sees.
#[derive(Debug, Clone)]
pub(crate) struct Owners {
    me: String,
    me_hash: u64,
    /// The other candidates (never `me`), with their hashes.
    peers: Vec<(u64, String)>,
    /// Whether the view came from the list in Redis (false: this replica serves
    /// every event, ownership being off or the list unreadable).
    shared: bool,
}

impl Owners {
    /// This replica alone: it owns every event (ownership off, one replica, or the
    /// list of owners could not be read: passing everything is always safe).
    pub(crate) fn everything(me: &str) -> Self {
        Owners {
            me: me.to_owned(),
            me_hash: replica_hash(me),
            peers: Vec::new(),
            shared: false,
        }
    }

    /// `me` among `others` (duplicates and `me` itself among them are ignored).
    /// `me` is always a candidate: a replica knows it is alive, even before its
    /// first beat is read back.
    pub(crate) fn among<I, S>(me: &str, others: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut peers: Vec<(u64, String)> = others
            .into_iter()
            .map(Into::into)
            .filter(|o| o != me)
            .map(|o| (replica_hash(&o), o))
            .collect();
        peers.sort();
        peers.dedup();
        Owners {
            me: me.to_owned(),
            me_hash: replica_hash(me),
            peers,
            shared: true,
        }
    }

    /// Whether this replica owns `event`.
    pub(crate) fn owns(&self, event: &str) -> bool {
        if self.peers.is_empty() {
            return true;
        }
        let e = fnv1a(event.as_bytes());
        let mine = (weight(e, self.me_hash), self.me.as_str());
        self.peers
            .iter()
            .all(|(h, id)| (weight(e, *h), id.as_str()) < mine)
    }

    /// Whether this replica keeps watch over the whole list of events (checks that
    /// each is still there, see the worker's opening of a pass): the first of the
    /// candidates by id, or the only one. Views may differ for a moment while a
    /// replica joins or leaves (two watch, or none until the views agree); the
    /// owner of an event with people waiting always checks it too.
    pub(crate) fn keeps_watch(&self) -> bool {
        self.peers.iter().all(|(_, id)| self.me < *id)
    }

    /// Replicas sharing the events, this one included (1 when it serves everything).
    pub(crate) fn replicas(&self) -> usize {
        self.peers.len() + 1
    }

    /// Whether the view came from the shared list (false: serving everything).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    /// The candidate ids, this replica's included, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.peers.iter().map(|(_, id)| id.clone()).collect();
        ids.push(self.me.clone());
        ids.sort();
        ids
    }
}

/// One entry of the list of owners as read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerEntry {
    /// The replica's id.
    pub id: String,
    /// Until when it counts as an owner (ms, Redis's clock).
    pub until_ms: u64,
    /// Its interval, when its heartbeat hash says it.
    pub period_ms: Option<u64>,
}

/// The candidates a replica with interval `my_period_ms` shares events with at
/// `now_ms`: the owners still within their window whose interval is no longer
/// than its own. A slower replica is left out by the faster ones (they pass its
/// events too), so every event is passed at least at the fastest replicas'
/// interval, and those all see the same list. A replica whose interval is unknown
/// is left out as well: leaving a live replica out costs double work, counting a
/// dead one in would leave its events unserved.
pub(crate) fn candidates(entries: &[OwnerEntry], now_ms: u64, my_period_ms: u64) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.until_ms > now_ms)
        .filter(|e| e.period_ms.is_some_and(|p| p <= my_period_ms))
        .map(|e| e.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn the_hash_is_pinned() {
        // Replicas of different builds must agree: these values never change (they
        // were checked against an independent implementation of FNV-1a and
        // splitmix64, in Python).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let c = ids(3);
        let owners: Vec<&str> = (0..6)
            .map(|i| owner(&format!("e{i}"), &c).unwrap_or(""))
            .collect();
        assert_eq!(owners, PINNED);
    }

    /// Who owns e0..e5 among replica-0..2 (see `the_hash_is_pinned`).
    const PINNED: [&str; 6] = [
        "replica-2",
        "replica-0",
        "replica-2",
        "replica-0",
        "replica-0",
        "replica-2",
    ];

    #[test]
    fn each_event_has_exactly_one_owner_and_the_load_is_even() {
        let c = ids(3);
        let views: Vec<Owners> = c.iter().map(|me| Owners::among(me, c.clone())).collect();
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let e = format!("event-{i}");
            let owning: Vec<usize> = (0..3).filter(|&r| views[r].owns(&e)).collect();
            assert_eq!(owning.len(), 1, "{e}: {owning:?}");
            assert_eq!(owner(&e, &c), Some(c[owning[0]].as_str()));
            counts[owning[0]] += 1;
        }
        for n in counts {
            assert!((9_000..=11_000).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn a_replica_leaving_moves_only_its_own_events() {
        let before = ids(4);
        let after: Vec<String> = before[..3].to_vec();
        for i in 0..5_000 {
            let e = format!("e{i}");
            let was = owner(&e, &before);
            let is = owner(&e, &after);
            if was != Some("replica-3") {
                assert_eq!(was, is, "{e} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn alone_or_unshared_a_replica_owns_everything() {
        let alone = Owners::among("a", ["a", "a"]);
        assert!(alone.owns("x") && alone.owns("y"));
        assert_eq!(alone.replicas(), 1);
        let off = Owners::everything("a");
        assert!(!off.is_shared() && off.owns("x"));
        let two = Owners::among("a", ["b", "b", "a"]);
        assert_eq!(two.ids(), ["a", "b"]);
        assert_eq!(two.replicas(), 2);
    }

    #[test]
    fn candidates_are_live_and_no_slower() {
        let e = |id: &str, until_ms, period_ms| OwnerEntry {
            id: id.to_owned(),
            until_ms,
            period_ms,
        };
        let entries = [
            e("live", 2_000, Some(1_000)),
            e("expired", 1_000, Some(1_000)),
            e("slow", 30_000, Some(12_000)),
            e("unknown", 2_000, None),
            e("fast", 1_100, Some(50)),
        ];
        assert_eq!(candidates(&entries, 1_000, 1_000), ["live", "fast"]);
        assert_eq!(candidates(&entries, 1_000, 50), ["fast"]);
        assert_eq!(
            candidates(&entries, 1_000, 12_000),
            ["live", "slow", "fast"]
        );
    }

    #[test]
    fn the_window_is_one_and_a_half_intervals() {
        assert_eq!(
            owner_window(Duration::from_secs(1)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            owner_window(Duration::from_millis(100)),
            Duration::from_millis(150)
        );
    }
}
