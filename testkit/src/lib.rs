//! Test and benchmark support for LockStock.
//!
//! The only stand-in LockStock's tests allow is the LLM provider itself: [`upstream`] serves
//! responses recorded from the real OpenAI, Anthropic and Ollama APIs (`tests/fixtures`),
//! byte for byte, and records what it received. [`hist`] and [`procstat`] serve the benchmark
//! (`bench/run`): latency percentiles, and the CPU time and memory of the processes measured.

pub mod hist;
pub mod procstat;
pub mod upstream;
