//! A bound on the distinct ports of one sandbox in use at once, so no single token or sandbox
//! can fill Envoy's DNS cache for everyone.
//!
//! Envoy's dynamic forward proxy keeps one DNS-cache host per `{port}-{sandboxId}` preview host
//! it forwarded to within its `host_ttl` (5 min in envoy/envoy.yaml), up to `max_hosts` shared by
//! every sandbox; past that it answers 503 "DNS cache overflow". A token without `ports` opens
//! 7,000 ports, so walking them would fill the cache alone (and make one Daytona API call per
//! port). Here a port counts for its sandbox from its last authorized request until `window`
//! (`--port-window`) later, as a host counts in Envoy's cache until `host_ttl` of disuse; a
//! request for a port not counted while `max_ports` (`--max-ports-per-sandbox`) others are is
//! refused with 429 and a `Retry-After` saying when the least recently used one frees up, before
//! any call to Daytona. Ports already counted keep working.
//!
//! Memory is bounded: at most `max_sandboxes` sandboxes are tracked (a `quick_cache`, S3-FIFO
//! eviction), each with at most `max_ports` ports.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::authz::decision::Denial;
use crate::authz::host::PreviewTarget;

/// The ports each sandbox has in use: `(port, last authorized request)`, at most `max_ports`.
type Ports = Arc<Mutex<Vec<(u16, Instant)>>>;

pub struct PortLimit {
    max_ports: usize,
    window: Duration,
    sandboxes: quick_cache::sync::Cache<u128, Ports>,
}

impl std::fmt::Debug for PortLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortLimit")
            .field("max_ports", &self.max_ports)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl PortLimit {
    pub fn new(max_ports: usize, window: Duration, max_sandboxes: u64) -> Self {
        PortLimit {
            max_ports,
            window,
            sandboxes: quick_cache::sync::Cache::new(
                usize::try_from(max_sandboxes).unwrap_or(usize::MAX),
            ),
        }
    }

    /// Counts an authorized request for `target`: fine for a port its sandbox already has in
    /// use, or while it has fewer than `max_ports`; else [`Denial::TooManyPorts`].
    pub fn admit(&self, target: &PreviewTarget) -> Result<(), Denial> {
        let sandbox = target.sandbox_id.uuid().as_u128();
        self.admit_at(sandbox, target.port, Instant::now())
            .map_err(|retry_after| Denial::TooManyPorts {
                limit: self.max_ports,
                retry_after,
            })
    }

    /// `Err(seconds)` until a port of this sandbox frees up, when `port` is one too many.
    fn admit_at(&self, sandbox: u128, port: u16, now: Instant) -> Result<(), u64> {
        let ports = match self.sandboxes.get_or_insert_with(&sandbox, || {
            Ok::<_, std::convert::Infallible>(Ports::default())
        }) {
            Ok(ports) => ports,
            Err(never) => match never {},
        };
        let mut ports = ports.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.window;
        ports.retain(|(_, seen)| now.saturating_duration_since(*seen) < window);
        if let Some(entry) = ports.iter_mut().find(|(p, _)| *p == port) {
            entry.1 = entry.1.max(now);
            return Ok(());
        }
        if ports.len() < self.max_ports {
            ports.push((port, now));
            return Ok(());
        }
        let oldest = ports.iter().map(|(_, seen)| *seen).min().unwrap_or(now);
        let wait = (oldest + window).saturating_duration_since(now);
        Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u128 = 1;
    const B: u128 = 2;

    #[test]
    fn new_ports_past_the_bound_are_refused_until_one_frees_up() {
        let limit = PortLimit::new(2, Duration::from_secs(300), 100);
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(A, 3000, t0), Ok(()));
        assert_eq!(
            limit.admit_at(A, 3001, t0 + Duration::from_secs(10)),
            Ok(())
        );
        // A third port: refused until 3000 (least recently used) is 300 s old.
        assert_eq!(
            limit.admit_at(A, 3002, t0 + Duration::from_secs(20)),
            Err(280)
        );
        // Ports in use keep working, and using one keeps it counted.
        assert_eq!(
            limit.admit_at(A, 3000, t0 + Duration::from_secs(30)),
            Ok(())
        );
        assert_eq!(
            limit.admit_at(A, 3002, t0 + Duration::from_secs(40)),
            Err(270),
            "3001 (seen at 10 s) is now the oldest"
        );
        // Another sandbox has its own bound.
        assert_eq!(
            limit.admit_at(B, 3002, t0 + Duration::from_secs(40)),
            Ok(())
        );
        // Once 3001 has been unused for the window, a new port takes its place.
        assert_eq!(
            limit.admit_at(A, 3002, t0 + Duration::from_secs(310)),
            Ok(())
        );
        assert_eq!(
            limit.admit_at(A, 3001, t0 + Duration::from_secs(311)),
            Err(19)
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_a_second() {
        let limit = PortLimit::new(1, Duration::from_millis(1500), 100);
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(A, 3000, t0), Ok(()));
        assert_eq!(limit.admit_at(A, 3001, t0), Err(2));
        assert_eq!(
            limit.admit_at(A, 3001, t0 + Duration::from_millis(1499)),
            Err(1)
        );
    }

    #[test]
    fn denials_name_the_limit() {
        let limit = PortLimit::new(1, Duration::from_secs(60), 100);
        let at = |port| PreviewTarget {
            sandbox_id: "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93".parse().unwrap(),
            port,
        };
        assert_eq!(limit.admit(&at(3000)), Ok(()));
        assert!(matches!(
            limit.admit(&at(3001)),
            Err(Denial::TooManyPorts { limit: 1, retry_after }) if (1..=60).contains(&retry_after)
        ));
    }

    #[test]
    fn tracked_sandboxes_are_bounded() {
        let limit = PortLimit::new(4, Duration::from_secs(60), 100);
        let now = Instant::now();
        for sandbox in 0..10_000u128 {
            limit.admit_at(sandbox, 3000, now).unwrap();
        }
        assert!(limit.sandboxes.len() <= 200, "{}", limit.sandboxes.len());
    }
}
