//! The event id rule, in one place.
//!
//! An event id names an event's keys (`<prefix>:<event>:queue`, or
//! `<prefix>:{<event>}:queue` in the cluster layout). It must be non-empty, and must
//! not hold `{` or `}`: a brace would change which part of a key Redis Cluster hashes,
//! so an event's keys could land in different slots. Everything that reads an event
//! id from outside (flags, `active_events`, `known_events`) goes through
//! [`EventId::parse`].

use std::fmt;

use thiserror::Error;

/// A valid event id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(String);

/// Why a text is not an event id.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0:?} is not a valid event id (empty or has braces)")]
pub struct InvalidEventId(pub String);

impl EventId {
    /// `id` if it is a valid event id.
    pub fn parse(id: impl Into<String>) -> Result<EventId, InvalidEventId> {
        let id = id.into();
        if Self::is_valid(&id) {
            Ok(EventId(id))
        } else {
            Err(InvalidEventId(id))
        }
    }

    /// Whether `id` is a valid event id: non-empty, without braces.
    pub fn is_valid(id: &str) -> bool {
        !id.is_empty() && !id.contains(['{', '}'])
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_braced_ids_are_refused() {
        assert_eq!(
            EventId::parse("concert-2024").map(|e| e.into_string()),
            Ok("concert-2024".to_owned())
        );
        for bad in ["", "a{b", "a}b", "{a}"] {
            assert_eq!(EventId::parse(bad), Err(InvalidEventId(bad.to_owned())));
        }
        assert!(EventId::is_valid("ünïcode and spaces"));
    }
}
