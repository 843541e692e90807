pub mod publisher;
