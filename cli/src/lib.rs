//! Shared pieces of the LockStock command-line tools.
