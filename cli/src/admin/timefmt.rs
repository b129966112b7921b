//! Times on the command line (`--since`, `--until`) and in output, without a date library:
//! RFC 3339 in UTC out; RFC 3339, a plain date, `@UNIX_SECONDS` or an age (`30m`, `2h`,
//! `7d`) in.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2024-05-01T12:00:00.123Z`.
pub fn format_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        ms % 1000
    )
}

const FORMS: &str = "use RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01, UTC), @UNIX_SECONDS, or an age such as 30m, 2h, 7d";

/// Parses a time given on the command line into milliseconds since the Unix epoch.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("cannot read the time {text:?}: {FORMS}");
    if let Some(secs) = t.strip_prefix('@') {
        let secs: u64 = secs.parse().map_err(|_| bad())?;
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    if let Some(age) = parse_age(t) {
        return Ok(now_ms.saturating_sub(age.ok_or_else(bad)?));
    }
    parse_rfc3339(t).ok_or_else(bad)
}

/// `Some(None)` when it looks like an age but does not parse.
fn parse_age(t: &str) -> Option<Option<u64>> {
    let t = t.strip_suffix(" ago").unwrap_or(t).trim();
    let unit_at = t.find(|c: char| !c.is_ascii_digit())?;
    if unit_at == 0 {
        return None;
    }
    let (n, unit) = t.split_at(unit_at);
    let ms = match unit.trim_start() {
        "s" | "sec" | "secs" => 1000,
        "m" | "min" | "mins" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 604_800_000,
        _ if unit.starts_with('-') => return None, // a date: 2024-05-01
        _ => return Some(None),
    };
    Some(n.parse::<u64>().ok().and_then(|n| n.checked_mul(ms)))
}

fn num(s: &str, digits: usize) -> Option<u32> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn parse_rfc3339(t: &str) -> Option<u64> {
    let (date, rest) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut parts = date.split('-');
    let y = num(parts.next()?, 4)?;
    let mo = num(parts.next()?, 2)?;
    let d = num(parts.next()?, 2)?;
    if parts.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    if civil_from_days(days) != (i64::from(y), mo, d) {
        return None; // 2023-02-30
    }
    let mut ms = days * 86_400_000;
    if let Some(rest) = rest {
        let (clock, offset_ms) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else {
            let i = rest.rfind(['+', '-'])?;
            let (c, off) = rest.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off[1..].split_once(':')?;
            let (oh, om) = (num(oh, 2)?, num(om, 2)?);
            (
                c,
                sign * (i64::from(oh) * 3_600_000 + i64::from(om) * 60_000),
            )
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (clock, None),
        };
        let mut f = hms.split(':');
        let h = num(f.next()?, 2)?;
        let mi = num(f.next()?, 2)?;
        let s = match f.next() {
            Some(s) => num(s, 2)?,
            None => 0,
        };
        if f.next().is_some() || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        let frac_ms = match frac {
            Some(fr) if !fr.is_empty() && fr.bytes().all(|b| b.is_ascii_digit()) => {
                let padded = format!("{fr:0<3}");
                padded[..3].parse::<i64>().ok()?
            }
            Some(_) => return None,
            None => 0,
        };
        ms += (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1000 + frac_ms;
        ms -= offset_ms;
    }
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_forms() {
        let ms = 1_714_564_800_123;
        assert_eq!(format_ms(ms), "2024-05-01T12:00:00.123Z");
        assert_eq!(parse_time("2024-05-01T12:00:00.123Z", 0), Ok(ms));
        assert_eq!(parse_time("2024-05-01T14:00:00.123+02:00", 0), Ok(ms));
        assert_eq!(parse_time("2024-05-01 12:00Z", 0), Ok(ms - 123));
        assert_eq!(parse_time("2024-05-01", 0), Ok(1_714_521_600_000));
        assert_eq!(parse_time("@1714564800", 0), Ok(ms - 123));
        assert_eq!(parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(
            parse_time("30 min ago", 10_000_000),
            Ok(10_000_000 - 1_800_000)
        );
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn nonsense_is_refused_with_the_forms() {
        for bad in [
            "yesterday",
            "2023-02-30",
            "2024-13-01",
            "12x",
            "2024-05-01T25:00Z",
            "",
        ] {
            let e = parse_time(bad, 0).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
