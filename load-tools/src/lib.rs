//! What the load tools (`check_load`, `soak`; `check_floor` needs none of it) share: latency
//! percentiles from an HdrHistogram, the benchmarks' sandbox ids, and the signer of access
//! tokens made from daytona-authz's JWT secret file.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use daytona_authz::authz::token::Signer;
use hdrhistogram::Histogram;

/// The cookie the tools' tokens travel in: daytona-authz's default `--cookie-name`.
pub use daytona_authz::authz::decision::DEFAULT_COOKIE_NAME as COOKIE_NAME;

/// Significant decimal digits the histogram keeps: latencies below 2,048 µs are recorded exactly,
/// larger ones within 0.1 % (1 µs in 1,024), a few hundred KiB at most per histogram.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latencies in microseconds, for percentiles in milliseconds.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Grows with the largest latency recorded (`record` resizes it).
        Latencies(Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits are valid"))
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if self.0.record(us).is_err() {
            // Beyond what the histogram can grow to: counted at its highest value.
            self.0.saturating_record(us);
        }
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.0
            .add(&other.0)
            .expect("a growable histogram takes any other");
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`th percentile (0 < p ≤ 100) in ms by nearest rank: the latency of rank
    /// ⌈p/100 · n⌉ in ascending order (at least the first); `None` when there are none.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        (!self.is_empty()).then(|| ms(self.0.value_at_quantile(p / 100.0)))
    }

    /// The largest latency in ms; `None` when there are none.
    pub fn max_ms(&self) -> Option<f64> {
        (!self.is_empty()).then(|| ms(self.0.max()))
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A sandbox id of the benchmarks, `{seed:08x}-0000-4000-8000-{index:012x}`: a well-formed UUID
/// (version 4, variant 1), one series of them per seed.
pub fn sandbox_id(seed: u32, index: usize) -> String {
    format!("{seed:08x}-0000-4000-8000-{index:012x}")
}

/// The HS256 signer for the secret in `path` (daytona-authz's `--jwt-secret-file`: one line,
/// its line ending not part of the secret).
pub fn signer(path: &Path) -> Result<Signer, String> {
    let secret = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Signer::hs256(
        secret.trim_end_matches(['\r', '\n']).as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest-rank percentile the tools computed by hand before, over sorted latencies.
    fn by_hand(sorted: &[u64], p: f64) -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1] as f64 / 1000.0)
    }

    fn latencies(us: &[u64]) -> Latencies {
        let mut l = Latencies::default();
        for &v in us {
            l.record(Duration::from_micros(v));
        }
        l
    }

    /// xorshift64, for reproducible samples.
    fn samples(n: usize, below: u64, mut state: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % below
            })
            .collect()
    }

    const PERCENTILES: [f64; 5] = [0.1, 50.0, 99.0, 99.9, 100.0];

    #[test]
    fn none_without_latencies() {
        let l = Latencies::default();
        assert!(l.is_empty());
        assert_eq!(l.percentile_ms(50.0), None);
        assert_eq!(l.max_ms(), None);
    }

    #[test]
    fn exactly_the_hand_computed_figures_below_2048_us() {
        for n in [1, 2, 3, 7, 100, 999, 1000, 1001, 12_345] {
            let mut us = samples(n, 2048, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
            let l = latencies(&us);
            us.sort_unstable();
            assert_eq!(l.len(), n as u64);
            for p in PERCENTILES {
                assert_eq!(l.percentile_ms(p), by_hand(&us, p), "n {n}, p{p}");
            }
            assert_eq!(l.max_ms(), by_hand(&us, 100.0), "n {n}");
        }
    }

    #[test]
    fn within_a_thousandth_above() {
        let mut us = samples(50_000, 20_000_000, 42);
        let l = latencies(&us);
        us.sort_unstable();
        for p in PERCENTILES {
            let (got, want) = (l.percentile_ms(p).unwrap(), by_hand(&us, p).unwrap());
            assert!(got >= want && got <= want * 1.001, "p{p}: {got} vs {want}");
        }
    }

    #[test]
    fn merged_as_if_recorded_together() {
        let (a, b) = (samples(3000, 5000, 1), samples(500, 100_000, 2));
        let mut merged = latencies(&a);
        merged.merge(&latencies(&b));
        let together = latencies(&[a, b].concat());
        assert_eq!(merged.len(), together.len());
        for p in PERCENTILES {
            assert_eq!(merged.percentile_ms(p), together.percentile_ms(p));
        }
    }

    #[test]
    fn sandbox_ids_are_uuids() {
        let id = sandbox_id(0x5eed_0001, 0x2a);
        assert_eq!(id, "5eed0001-0000-4000-8000-00000000002a");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
    }
}
