//! Sentinel: per-agent anomaly detection over the request rate, O(1) per request stamp.
//!
//! Request stamps are counted in one-second buckets (server clock). When a second closes, its
//! count updates an exponentially weighted mean and variance of the per-second rate (time
//! constant [`TAU_SECS`]); idle seconds between two requests are folded in with a closed form
//! rather than a loop. A request trips the breaker when, after the agent's warm-up, the count
//! of the current second exceeds `max(min_burst, mean + sensitivity × sd)`, where `sd` is at
//! least `sqrt(mean)` (Poisson noise) and at least 1, so perfectly regular traffic does not
//! make the test hair-trigger. The optional hard cap counts requests over the last 60 one-second
//! buckets (a ring of 60 counters) and applies during warm-up too.

use lockstock::api::SentinelConfig;

/// Time constant of the rate statistics, in seconds.
pub(crate) const TAU_SECS: f64 = 60.0;
const WINDOW: usize = 60;
const ENCODED_LEN: usize = 8 * 5 + 4 * WINDOW + 8;

fn alpha() -> f64 {
    1.0 - (-1.0 / TAU_SECS).exp()
}

/// One agent's rate statistics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sentinel {
    /// When the agent's first request stamp arrived (warm-up starts here).
    first_ms: Option<u64>,
    /// The open second (seconds since the epoch).
    bucket: u64,
    mean: f64,
    var: f64,
    /// Requests per second for the last 60 seconds, indexed by second % 60.
    ring: [u32; WINDOW],
    ring_sum: u64,
}

impl Default for Sentinel {
    fn default() -> Self {
        Self {
            first_ms: None,
            bucket: 0,
            mean: 0.0,
            var: 0.0,
            ring: [0; WINDOW],
            ring_sum: 0,
        }
    }
}

impl Sentinel {
    /// Counts one request stamp at `now_ms`; returns why the breaker must open, if it must.
    ///
    /// Statistics are learned even when Sentinel is disabled, so enabling it later starts from
    /// a known baseline.
    pub fn observe(&mut self, now_ms: u64, cfg: &SentinelConfig) -> Option<String> {
        let sec = now_ms / 1000;
        let first_ms = *self.first_ms.get_or_insert_with(|| {
            self.bucket = sec;
            now_ms
        });
        if sec > self.bucket {
            self.advance(sec);
        }
        let slot = &mut self.ring[(self.bucket % WINDOW as u64) as usize];
        *slot = slot.saturating_add(1);
        let count = u64::from(*slot);
        self.ring_sum += 1;
        if !cfg.enabled {
            return None;
        }
        if let Some(cap) = cfg.max_per_minute
            && self.ring_sum > cap
        {
            return Some(format!(
                "Sentinel: {} requests in the last 60 seconds exceed the cap of {cap} per minute",
                self.ring_sum
            ));
        }
        let warm = now_ms >= first_ms.saturating_add(cfg.warmup_secs.saturating_mul(1000));
        if warm {
            let sd = self.var.sqrt().max(self.mean.sqrt()).max(1.0);
            let threshold = (self.mean + cfg.sensitivity * sd).max(cfg.min_burst as f64);
            if count as f64 > threshold {
                return Some(format!(
                    "Sentinel: {count} requests in one second, far above the learned rate of \
                     {:.1}/s (sd {sd:.1}, threshold {threshold:.0})",
                    self.mean
                ));
            }
        }
        None
    }

    /// Closes the open second and any idle seconds up to `sec`, which becomes the open one.
    fn advance(&mut self, sec: u64) {
        let gap = sec - self.bucket;
        let closed = f64::from(self.ring[(self.bucket % WINDOW as u64) as usize]);
        let a = alpha();
        let diff = closed - self.mean;
        let incr = a * diff;
        self.mean += incr;
        self.var = (1.0 - a) * (self.var + diff * incr);
        // `idle` seconds with zero requests, in closed form: with d = 1 - a,
        // mean_k = d^k mean and var_k = d^k (var + mean² (1 - d^k)).
        let idle = gap - 1;
        if idle > 0 {
            let dk = (1.0 - a).powf(idle as f64);
            self.var = dk * (self.var + self.mean * self.mean * (1.0 - dk));
            self.mean *= dk;
        }
        for i in 1..=gap.min(WINDOW as u64) {
            let idx = ((self.bucket + i) % WINDOW as u64) as usize;
            self.ring_sum -= u64::from(self.ring[idx]);
            self.ring[idx] = 0;
        }
        self.bucket = sec;
    }

    /// The learned rate (requests per second) and its standard deviation.
    #[cfg(test)]
    pub fn rate(&self) -> (f64, f64) {
        (self.mean, self.var.sqrt())
    }

    /// A compact, versionless encoding for the agents table.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.first_ms.unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(&self.bucket.to_le_bytes());
        out.extend_from_slice(&self.mean.to_le_bytes());
        out.extend_from_slice(&self.var.to_le_bytes());
        out.extend_from_slice(&self.ring_sum.to_le_bytes());
        for c in &self.ring {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(&[0u8; 8]);
        out
    }

    /// Decodes [`Self::to_bytes`]; anything unreadable starts the statistics afresh.
    pub fn from_bytes(b: &[u8]) -> Self {
        if b.len() != ENCODED_LEN {
            return Self::default();
        }
        let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let first = u(0);
        let mut ring = [0u32; WINDOW];
        for (i, c) in ring.iter_mut().enumerate() {
            let at = 40 + i * 4;
            *c = u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        }
        let s = Self {
            first_ms: (first != u64::MAX).then_some(first),
            bucket: u(1),
            mean: f64::from_bits(u(2)),
            var: f64::from_bits(u(3)),
            ring_sum: u(4),
            ring,
        };
        let consistent = s.mean.is_finite()
            && s.var.is_finite()
            && s.ring_sum == s.ring.iter().map(|&c| u64::from(c)).sum::<u64>();
        if consistent { s } else { Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn cfg() -> SentinelConfig {
        SentinelConfig::default()
    }

    /// `per_sec` requests in each of `secs` seconds from `start`, evenly spread; the first trip.
    fn steady(
        s: &mut Sentinel,
        cfg: &SentinelConfig,
        start: u64,
        secs: u64,
        per_sec: u64,
    ) -> Option<String> {
        for sec in 0..secs {
            for i in 0..per_sec {
                let t = start + sec * 1000 + i * 1000 / per_sec.max(1);
                if let Some(r) = s.observe(t, cfg) {
                    return Some(r);
                }
            }
        }
        None
    }

    fn burst(s: &mut Sentinel, cfg: &SentinelConfig, at: u64, n: u64) -> Option<u64> {
        (1..=n).find(|_| s.observe(at, cfg).is_some())
    }

    #[test]
    fn a_burst_after_a_steady_rate_trips() {
        let mut s = Sentinel::default();
        assert_eq!(steady(&mut s, &cfg(), T0, 400, 100), None);
        let (mean, _) = s.rate();
        assert!((mean - 100.0).abs() < 1.0, "learned {mean}");
        // 100/s learned, sd floor 10: threshold 160.
        let tripped_at = burst(&mut s, &cfg(), T0 + 400_000, 1000).expect("burst must trip");
        assert!((150..=170).contains(&tripped_at), "tripped at {tripped_at}");
    }

    #[test]
    fn steady_traffic_at_the_same_mean_does_not_trip() {
        let mut s = Sentinel::default();
        assert_eq!(steady(&mut s, &cfg(), T0, 1200, 100), None);
        // A gentle wobble around the mean is fine too.
        for sec in 0..300u64 {
            let n = if sec % 2 == 0 { 120 } else { 80 };
            assert_eq!(steady(&mut s, &cfg(), T0 + (1200 + sec) * 1000, 1, n), None);
        }
    }

    #[test]
    fn a_tool_loop_burst_of_a_few_dozen_is_normal() {
        let mut s = Sentinel::default();
        assert_eq!(steady(&mut s, &cfg(), T0, 600, 1), None);
        assert_eq!(burst(&mut s, &cfg(), T0 + 600_000, 50), None);
        assert_eq!(burst(&mut s, &cfg(), T0 + 700_000, 60), None);
        // …but past min_burst it is not.
        assert_eq!(burst(&mut s, &cfg(), T0 + 800_000, 100), Some(61));
    }

    #[test]
    fn warm_up_only_applies_the_hard_cap() {
        let mut s = Sentinel::default();
        assert_eq!(burst(&mut s, &cfg(), T0, 500), None, "in warm-up");
        let capped = SentinelConfig {
            max_per_minute: Some(100),
            ..cfg()
        };
        let mut s = Sentinel::default();
        assert_eq!(burst(&mut s, &capped, T0, 500), Some(101));
        // Warm-up ends 300 s after the first request, not after the first burst.
        let mut s = Sentinel::default();
        s.observe(T0, &cfg());
        assert_eq!(burst(&mut s, &cfg(), T0 + 299_000, 100), None);
        let mut s = Sentinel::default();
        s.observe(T0, &cfg());
        assert_eq!(burst(&mut s, &cfg(), T0 + 300_000, 100), Some(61));
    }

    #[test]
    fn the_hard_cap_is_a_sliding_minute() {
        let capped = SentinelConfig {
            max_per_minute: Some(120),
            ..cfg()
        };
        let mut s = Sentinel::default();
        // 2/s forever stays at 120 per 60 s: never above the cap.
        assert_eq!(steady(&mut s, &capped, T0, 600, 2), None);
        // 3/s gets there within a minute.
        let mut s = Sentinel::default();
        assert!(steady(&mut s, &capped, T0, 60, 3).is_some());
        // A minute-old burst has left the window.
        let mut s = Sentinel::default();
        assert_eq!(burst(&mut s, &capped, T0, 120), None);
        assert_eq!(burst(&mut s, &capped, T0 + 59_000, 1), Some(1));
        let mut s = Sentinel::default();
        assert_eq!(burst(&mut s, &capped, T0, 120), None);
        assert_eq!(burst(&mut s, &capped, T0 + 60_000, 120), None);
    }

    #[test]
    fn idle_decay_matches_the_loop_and_forgets_old_rates() {
        let mut closed = Sentinel::default();
        steady(&mut closed, &cfg(), T0, 100, 50);
        let mut looped = closed.clone();
        // Closed form over 500 idle seconds…
        closed.observe(T0 + 600_000, &cfg());
        // …equals 500 one-second steps with zero requests.
        let a = alpha();
        let c = f64::from(looped.ring[(looped.bucket % 60) as usize]);
        for x in std::iter::once(c).chain(std::iter::repeat_n(0.0, 500)) {
            let diff = x - looped.mean;
            let incr = a * diff;
            looped.mean += incr;
            looped.var = (1.0 - a) * (looped.var + diff * incr);
        }
        let (m1, s1) = closed.rate();
        let (m2, s2) = looped.rate();
        assert!(
            (m1 - m2).abs() < 1e-9 && (s1 - s2).abs() < 1e-9,
            "{m1} {m2} {s1} {s2}"
        );
        assert!(m1 < 0.05, "the old rate is forgotten: {m1}");
        // With the rate forgotten, the floor is min_burst again.
        assert_eq!(burst(&mut closed, &cfg(), T0 + 700_000, 100), Some(61));
    }

    #[test]
    fn disabled_never_trips_but_still_learns() {
        let off = SentinelConfig {
            enabled: false,
            max_per_minute: Some(1),
            ..cfg()
        };
        let mut s = Sentinel::default();
        assert_eq!(steady(&mut s, &off, T0, 400, 10), None);
        assert_eq!(burst(&mut s, &off, T0 + 400_000, 1000), None);
        assert!(s.rate().0 > 9.0);
    }

    #[test]
    fn encoding_round_trips() {
        let mut s = Sentinel::default();
        steady(&mut s, &cfg(), T0, 90, 7);
        let back = Sentinel::from_bytes(&s.to_bytes());
        assert_eq!(back, s);
        assert_eq!(Sentinel::from_bytes(b"junk"), Sentinel::default());
        assert_eq!(
            Sentinel::from_bytes(&Sentinel::default().to_bytes()),
            Sentinel::default()
        );
    }
}
