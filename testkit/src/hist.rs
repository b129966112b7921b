//! A latency histogram with bounded relative error, for the load generator.
//!
//! Values (nanoseconds) below 256 are counted exactly; above, each power of two is split into
//! 128 buckets, so a reported percentile is within 0.8 % of the true value. Fixed size
//! (7,424 counters), mergeable by addition, no allocation per sample.

const SUB: u64 = 128;
const EXACT: usize = 256;
const LEN: usize = EXACT + 56 * SUB as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LEN],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

fn index(v: u64) -> usize {
    if v < EXACT as u64 {
        return v as usize;
    }
    let msb = 63 - u64::from(v.leading_zeros());
    let shift = msb - 7;
    let sub = (v >> shift) - SUB;
    EXACT + (shift as usize - 1) * SUB as usize + sub as usize
}

/// The middle of a bucket's range.
fn value_of(i: usize) -> u64 {
    if i < EXACT {
        return i as u64;
    }
    let shift = (i - EXACT) / SUB as usize + 1;
    let sub = (i - EXACT) as u64 % SUB + SUB;
    (sub << shift) + (1u64 << shift) / 2
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value below which a fraction `q` (0..=1) of the samples fall; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_u64() {
        let mut values: Vec<u64> = (0..64)
            .flat_map(|s| {
                let v = 1u64 << s;
                [v, v + 1, v + v / 2, v.saturating_mul(2) - 1]
            })
            .collect();
        values.push(u64::MAX);
        values.sort_unstable();
        let mut last = 0;
        for v in values {
            let i = index(v);
            assert!(i < LEN, "{v} -> {i}");
            assert!(i >= last, "{v} -> {i} < {last}");
            last = i;
        }
    }

    #[test]
    fn relative_error_is_under_one_percent() {
        for v in [
            300u64,
            1_000,
            12_345,
            99_999,
            1_000_000,
            123_456_789,
            9_876_543_210,
        ] {
            let got = value_of(index(v));
            let err = (got as f64 - v as f64).abs() / v as f64;
            assert!(err < 0.008, "{v} -> {got} ({err})");
        }
        for v in 0..256 {
            assert_eq!(value_of(index(v)), v);
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=500u64 {
            a.record(v * 1000);
        }
        for v in 501..=1000u64 {
            b.record(v * 1000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let p50 = a.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.01, "{p50}");
        let p99 = a.quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.01, "{p99}");
        assert_eq!(a.quantile(1.0), 1_000_000);
        assert_eq!(a.min(), 1000);
        assert!((a.mean() - 500_500.0).abs() < 1.0);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
