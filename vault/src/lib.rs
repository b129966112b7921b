//! Liberty vault library.
