//! Shared pieces of the LockStock command-line tools.

pub mod admin;
pub mod config;
pub mod docs;
