pub mod options;
pub mod publisher;
