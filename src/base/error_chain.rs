//! An error and its causes on one line, each cause once.
//!
//! The worker's own error types say only their own context in `Display` and give
//! the underlying error as `source()`, so printing the chain shows each cause once.
//! Some errors of other crates also repeat their source in their own text (a Redis
//! server error, a Kafka error code); a cause whose text is already on the line is
//! not printed again.

use std::error::Error;
use std::fmt;

/// Displays `error: cause: cause ...`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

/// The chain of `e`, for a log field (`error = %chain(&e)`) or a message.
pub fn chain<E: Error + 'static>(e: &E) -> Chain<'_> {
    Chain(e)
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("starting")]
        Start(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("redis")]
        Redis(#[source] Repeats),
    }

    /// Like a Redis error: its text is its source's text.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Repeats(#[source] Leaf);

    #[derive(Debug, thiserror::Error)]
    #[error("cluster support disabled")]
    struct Leaf;

    #[test]
    fn each_cause_is_shown_once() {
        let e = Outer::Start(Inner::Redis(Repeats(Leaf)));
        assert_eq!(
            chain(&e).to_string(),
            "starting: redis: cluster support disabled"
        );
        assert_eq!(chain(&Leaf).to_string(), "cluster support disabled");
    }
}
