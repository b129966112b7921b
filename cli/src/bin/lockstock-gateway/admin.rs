//! Admin commands against the control plane: agents, lock, unlock, budget, sentinel, stamps,
//! alerts. Errors from the server arrive as sentences (see `lockstock::client`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use lockstock::api::{AgentInfo, SentinelUpdate, Verdict};
use lockstock::client::ControlPlane;

use crate::cli::{Budget, Lock, Sentinel, Stamps};

fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn state(a: &AgentInfo) -> String {
    if !a.activated {
        "not activated".into()
    } else if a.locked {
        match &a.lock_reason {
            Some(r) => format!("locked: {r}"),
            None => "locked".into(),
        }
    } else {
        "ok".into()
    }
}

fn budget(a: &AgentInfo) -> String {
    match (a.remaining, a.budget) {
        (Some(r), Some(b)) => format!("{r} of {b} left"),
        _ => "unlimited".into(),
    }
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub async fn agents(cp: &ControlPlane, json: bool) -> Result<()> {
    let list = cp.agents().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.agents.is_empty() {
        println!("no agents yet: run `lockstock-gateway provision --name NAME`");
        return Ok(());
    }
    let rows = list
        .agents
        .iter()
        .map(|a| {
            vec![
                a.agent_id.to_string(),
                state(a),
                budget(a),
                a.used.to_string(),
                ago(a.last_seen_ms),
                a.seq.to_string(),
            ]
        })
        .collect();
    table(
        &["AGENT", "STATE", "BUDGET", "USED", "LAST SEEN", "SEQ"],
        rows,
    );
    Ok(())
}

fn describe(a: &AgentInfo) {
    println!("{}: {}; budget {}", a.agent_id, state(a), budget(a));
}

pub async fn lock(cp: &ControlPlane, agent: &lockstock::AgentId, args: &Lock) -> Result<()> {
    describe(&cp.lock(agent, args.reason.clone()).await?);
    Ok(())
}

pub async fn unlock(cp: &ControlPlane, agent: &lockstock::AgentId) -> Result<()> {
    describe(&cp.unlock(agent).await?);
    Ok(())
}

pub async fn set_budget(
    cp: &ControlPlane,
    agent: &lockstock::AgentId,
    args: &Budget,
) -> Result<()> {
    let tokens = if args.unlimited { None } else { args.tokens };
    describe(&cp.set_budget(agent, tokens).await?);
    Ok(())
}

pub async fn sentinel(
    cp: &ControlPlane,
    agent: &lockstock::AgentId,
    args: &Sentinel,
) -> Result<()> {
    let update = SentinelUpdate {
        enabled: if args.off {
            Some(false)
        } else if args.on {
            Some(true)
        } else {
            None
        },
        max_per_minute: args.max_per_minute.map(Some),
        sensitivity: args.sensitivity,
        ..SentinelUpdate::default()
    };
    let info = cp.set_sentinel(agent, &update).await?;
    let s = &info.sentinel;
    println!(
        "{}: breaker {}; sensitivity {}; hard cap {}; warm-up {}s; bursts under {}/s never trip",
        info.agent_id,
        if s.enabled { "on" } else { "off" },
        s.sensitivity,
        s.max_per_minute
            .map_or("none".to_owned(), |n| format!("{n}/min")),
        s.warmup_secs,
        s.min_burst
    );
    Ok(())
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Ok { .. } => "ok".into(),
        Verdict::Locked { .. } => "locked".into(),
        Verdict::Budget => "budget".into(),
        Verdict::Breaker { .. } => "breaker".into(),
        Verdict::Fork => "fork".into(),
        Verdict::Invalid { .. } => "invalid".into(),
    }
}

pub async fn stamps(cp: &ControlPlane, agent: &lockstock::AgentId, args: &Stamps) -> Result<()> {
    let page = cp.stamps(agent, args.after, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    if page.stamps.is_empty() {
        println!("no stamps after seq {}", args.after);
        return Ok(());
    }
    let rows = page
        .stamps
        .iter()
        .map(|r| {
            let s = &r.signed.stamp;
            let time = humantime(s.time_ms);
            vec![
                s.seq.to_string(),
                time,
                s.kind.as_str().to_owned(),
                verdict(&r.verdict),
                s.model.clone(),
                s.tokens_in.to_string(),
                s.tokens_out.to_string(),
                r.hash.to_hex()[..16].to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "TIME (UTC)",
            "KIND",
            "VERDICT",
            "MODEL",
            "IN",
            "OUT",
            "HASH",
        ],
        rows,
    );
    if let Some(next) = page.next_after {
        println!("(more: --after {next})");
    }
    Ok(())
}

pub async fn alerts(cp: &ControlPlane, json: bool) -> Result<()> {
    let list = cp.alerts().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.alerts.is_empty() {
        println!("no alerts");
        return Ok(());
    }
    let rows = list
        .alerts
        .iter()
        .map(|a| {
            vec![
                humantime(a.time_ms),
                a.agent_id.to_string(),
                a.reason.clone(),
            ]
        })
        .collect();
    table(&["TIME (UTC)", "AGENT", "REASON"], rows);
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date library.
pub fn humantime(ms: u64) -> String {
    let secs = Duration::from_millis(ms).as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn humantime_matches_known_dates() {
        assert_eq!(super::humantime(0), "1970-01-01 00:00:00");
        assert_eq!(super::humantime(1_760_728_905_000), "2025-10-17 19:21:45");
        assert_eq!(super::humantime(951_782_400_000), "2000-02-29 00:00:00");
    }
}
