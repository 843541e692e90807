//! Where every key lives.
//!
//! The API beside the worker writes the queue and the session hashes, so their names
//! are a contract (see the README). Two layouts exist: the default one, and one for
//! Redis Cluster that puts every key of an event, sessions included, in the event's
//! hash slot (`<prefix>:{<event>}:...`) so that one script call touches one slot.

use std::fmt;
use std::str::FromStr;

/// Which naming scheme the keys follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyLayout {
    /// `<prefix>:<event>:queue`, `<prefix>:session:<session>`.
    #[default]
    Default,
    /// `<prefix>:{<event>}:queue`, `<prefix>:{<event>}:session:<session>`.
    Cluster,
}

impl FromStr for KeyLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(KeyLayout::Default),
            "cluster" => Ok(KeyLayout::Cluster),
            other => Err(format!(
                "unknown key layout {other:?}: use default or cluster"
            )),
        }
    }
}

impl fmt::Display for KeyLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyLayout::Default => "default",
            KeyLayout::Cluster => "cluster",
        })
    }
}

/// Builds key names for one prefix and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    layout: KeyLayout,
}

impl Keys {
    /// Key names under `prefix`, in `layout`.
    pub fn new(prefix: impl Into<String>, layout: KeyLayout) -> Self {
        Keys {
            prefix: prefix.into(),
            layout,
        }
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The layout.
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// `<prefix>:active_events`: the set of event ids to serve (the same in both layouts).
    pub fn active_events(&self) -> String {
        format!("{}:active_events", self.prefix)
    }

    /// `<prefix>:active_events_version` (STRING counter, worker-owned): bumped by a
    /// replica that finds one of the events it owns gone from `active_events` (the
    /// set's size alone would not show an event swapped for another), so every
    /// replica reads the whole set again on its next pass.
    pub fn active_events_version(&self) -> String {
        format!("{}:active_events_version", self.prefix)
    }

    /// `<prefix>:known_events` (SET, worker-owned): every event a worker has served
    /// and not yet drained. An event in here but not served is retired: it admits
    /// nobody, its slots still expire and its outbox still publishes, and it leaves
    /// this set once nothing of it is left.
    pub fn known_events(&self) -> String {
        format!("{}:known_events", self.prefix)
    }

    /// Live workers (ZSET: id -> last heartbeat ms, worker-owned).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Replicas sharing the events (ZSET: id -> until when, ms of Redis's clock, it
    /// counts as an owner: its last completed pass + 1.5 of its periods;
    /// worker-owned). A global key like `workers`: one small set for the whole
    /// deployment, read once per pass by every replica.
    pub fn owners(&self) -> String {
        format!("{}:owners", self.prefix)
    }

    /// One worker's heartbeat (HASH with a TTL, worker-owned).
    pub fn worker(&self, id: &str) -> String {
        format!("{}:worker:{}", self.prefix, id)
    }

    /// The part every per-event key starts with: `<prefix>:<event>` or `<prefix>:{<event>}`.
    fn event_base(&self, event: &str) -> String {
        match self.layout {
            KeyLayout::Default => format!("{}:{}", self.prefix, event),
            KeyLayout::Cluster => format!("{}:{{{}}}", self.prefix, event),
        }
    }

    /// Waiting sessions (ZSET, written by the API).
    pub fn queue(&self, event: &str) -> String {
        format!("{}:queue", self.event_base(event))
    }

    /// The priority lane (ZSET), admitted before the queue.
    pub fn priority(&self, event: &str) -> String {
        format!("{}:priority", self.event_base(event))
    }

    /// Sessions holding a checkout slot (SET).
    pub fn processing(&self, event: &str) -> String {
        format!("{}:processing", self.event_base(event))
    }

    /// Per-event overrides (HASH, written by operators).
    pub fn config(&self, event: &str) -> String {
        format!("{}:config", self.event_base(event))
    }

    /// Admissions whose QUEUE_READY is not yet acknowledged by Kafka (ZSET, worker-owned).
    pub fn outbox(&self, event: &str) -> String {
        format!("{}:outbox", self.event_base(event))
    }

    /// Checkout deadline of every admitted session (ZSET, worker-owned).
    pub fn deadlines(&self, event: &str) -> String {
        format!("{}:deadlines", self.event_base(event))
    }

    /// Admissions counted in the current minute (HASH, worker-owned).
    pub fn rate(&self, event: &str) -> String {
        format!("{}:rate", self.event_base(event))
    }

    /// `<event>:valve`: the checkout-health valve's effective capacity and state.
    pub fn valve(&self, event: &str) -> String {
        format!("{}:valve", self.event_base(event))
    }

    /// `<event>:sold_out`: a sell-out to announce, and whether it was.
    pub fn sold_out(&self, event: &str) -> String {
        format!("{}:sold_out", self.event_base(event))
    }

    /// `<event>:stats`: the figures the API's wait estimate reads (worker-written),
    /// and the counters the scripts keep them from.
    pub fn stats(&self, event: &str) -> String {
        format!("{}:stats", self.event_base(event))
    }

    /// SSCAN cursor of the reaper's sweep for slots without a deadline (STRING, worker-owned).
    pub fn reap_cursor(&self, event: &str) -> String {
        format!("{}:reap_cursor", self.event_base(event))
    }

    /// Outbox entries that cannot be parsed, kept for an operator (ZSET, worker-owned).
    pub fn outbox_invalid(&self, event: &str) -> String {
        format!("{}:outbox:invalid", self.event_base(event))
    }

    /// What a session id is appended to for its hash.
    pub fn session_prefix(&self, event: &str) -> String {
        match self.layout {
            KeyLayout::Default => format!("{}:session:", self.prefix),
            KeyLayout::Cluster => format!("{}:session:", self.event_base(event)),
        }
    }

    /// The session hash (written by the API, admitted by the worker).
    pub fn session(&self, event: &str, session: &str) -> String {
        format!("{}{}", self.session_prefix(event), session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_matches_the_contract() {
        let k = Keys::new("waitroom", KeyLayout::Default);
        assert_eq!(k.active_events(), "waitroom:active_events");
        assert_eq!(k.queue("concert-2024"), "waitroom:concert-2024:queue");
        assert_eq!(k.processing("e"), "waitroom:e:processing");
        assert_eq!(k.config("e"), "waitroom:e:config");
        assert_eq!(k.session("e", "abc"), "waitroom:session:abc");
        assert_eq!(k.owners(), "waitroom:owners");
    }

    #[test]
    fn cluster_layout_hash_tags_the_event() {
        let k = Keys::new("waitroom", KeyLayout::Cluster);
        assert_eq!(k.active_events(), "waitroom:active_events");
        assert_eq!(k.owners(), "waitroom:owners");
        assert_eq!(k.queue("e1"), "waitroom:{e1}:queue");
        assert_eq!(k.outbox("e1"), "waitroom:{e1}:outbox");
        assert_eq!(k.session("e1", "abc"), "waitroom:{e1}:session:abc");
    }

    #[test]
    fn layout_parses_and_rejects() {
        assert_eq!("cluster".parse::<KeyLayout>(), Ok(KeyLayout::Cluster));
        assert!("sharded".parse::<KeyLayout>().is_err());
    }
}
