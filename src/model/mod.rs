pub mod clock;
pub mod keys;
pub mod outbox;
pub mod token;
