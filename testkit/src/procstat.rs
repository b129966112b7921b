//! CPU time and memory of running processes, from `/proc` (Linux).
//!
//! A process is counted with its descendants (nginx's workers, a Python server's workers), so
//! a benchmark names the process it started and gets what the whole tree spent.

use std::collections::HashMap;

/// Clock ticks per second of `utime`/`stime` in `/proc/PID/stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// (ppid, utime + stime in ticks) of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields from 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Every live process id with its parent.
fn parents() -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = stat(pid) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `pid` and all its live descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let parents = parents();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// CPU seconds (user + system) spent so far by `pid` and its live descendants.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks: u64 = tree(pid)
        .into_iter()
        .filter_map(|p| stat(p).map(|s| s.1))
        .sum();
    ticks as f64 / clock_ticks() as f64
}

/// CPU seconds of a single process (all its threads), without descendants.
pub fn own_cpu_seconds(pid: u32) -> f64 {
    stat(pid).map_or(0.0, |s| s.1 as f64 / clock_ticks() as f64)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory (KiB) now, summed over `pid` and its descendants.
pub fn rss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_kib(p, "VmRSS:"))
        .sum()
}

/// Peak resident memory (KiB) of `pid` and its live descendants, each one's `VmHWM` summed.
pub fn peak_rss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_kib(p, "VmHWM:"))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(own_cpu_seconds(me) >= 0.0);
        assert!(cpu_seconds(me) >= own_cpu_seconds(me));
        assert!(rss_kib(me) > 0);
        assert!(peak_rss_kib(me) >= rss_kib(me) / 2);
        assert!(tree(me).contains(&me));
    }
}
