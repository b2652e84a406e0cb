//! Bounds on distinct things in use at once per owner, so no single token, sandbox or person
//! can fill a shared resource for everyone.
//!
//! **Ports per sandbox** ([`PortLimit`]). Envoy's dynamic forward proxy keeps one DNS-cache host
//! per `{port}-{sandboxId}` preview host it forwarded to within its `host_ttl` (5 min in
//! envoy/envoy.yaml), up to `max_hosts` shared by every sandbox; past that it answers 503 "DNS
//! cache overflow". A token without `ports` opens 7,000 ports, so walking them would fill the
//! cache alone (and make one Daytona API call per port). Here a port counts for its sandbox from
//! its last authorized request until `window` (`--port-window`) later, as a host counts in
//! Envoy's cache until `host_ttl` of disuse; a request for a port not counted while `max_ports`
//! (`--max-ports-per-sandbox`) others are is refused with 429 and a `Retry-After` saying when the
//! least recently used one frees up, before any call to Daytona. Ports already counted keep
//! working.
//!
//! **Unknown sandboxes per person** ([`SandboxLimit`]). A token the `[[policy]]` rules decide
//! names no sandbox: whoever holds one can ask for any sandbox id, and each new one is a call to
//! Daytona's `GET /sandbox/{id}`, which shares the API key's slots and rate limit with the
//! preview tokens everyone needs. Per person (the token's `sub`, else its `jti`), each ask counts
//! while it is in flight and, when Daytona does not know the id, for the window; at
//! `max` (`--max-sandboxes-per-person`) counted, another ask is refused. Sandboxes this replica
//! saw described never count and are never refused.
//!
//! Memory is bounded: at most `max_owners` owners are tracked (a `quick_cache`, S3-FIFO
//! eviction), each with at most `max` items.

use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::authz::decision::Denial;
use crate::authz::host::{PreviewTarget, SandboxId};

/// The items an owner has in use: `(item, last authorized request)`, at most `max`.
type InUse<T> = Arc<Mutex<Vec<(T, Instant)>>>;

/// At most `max` distinct items per owner within `window` of their last use.
pub struct DistinctLimit<O, T> {
    max: usize,
    window: Duration,
    owners: quick_cache::sync::Cache<O, InUse<T>>,
}

/// Ports per sandbox (the sandbox's UUID as a number).
pub type PortLimit = DistinctLimit<u128, u16>;

/// Sandbox ids Daytona did not know, per person (the token's `sub` or `jti`): each entry is
/// `(sandbox, confirmed)`, unconfirmed while Daytona is being asked.
pub struct SandboxLimit {
    unknown: DistinctLimit<String, (u128, bool)>,
    /// Sandboxes Daytona described on this replica: never refused (their description may have
    /// expired from the cache, and a page must not lock a person out of them).
    described: quick_cache::sync::Cache<u128, ()>,
}

impl<O, T> std::fmt::Debug for DistinctLimit<O, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistinctLimit")
            .field("max", &self.max)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<O: Eq + Hash + Clone, T: Copy + PartialEq> DistinctLimit<O, T> {
    pub fn new(max: usize, window: Duration, max_owners: u64) -> Self {
        DistinctLimit {
            max,
            window,
            owners: quick_cache::sync::Cache::new(
                usize::try_from(max_owners).unwrap_or(usize::MAX),
            ),
        }
    }

    /// `Err(seconds)` until an item of this owner frees up, when `item` is one too many; an item
    /// in use is seen again (its window starts anew).
    fn admit_at<Q>(&self, owner: &Q, item: T, now: Instant) -> Result<(), u64>
    where
        Q: Hash + quick_cache::Equivalent<O> + ToOwned<Owned = O> + ?Sized,
    {
        self.admit_with(
            owner,
            item,
            now,
            |i| *i == item,
            |seen| *seen = (*seen).max(now),
        )
    }

    /// The same, with what makes an entry `item` (`is_it`) and what to do to an entry that is
    /// already there (`present`, given its last-seen time) up to the caller.
    fn admit_with<Q>(
        &self,
        owner: &Q,
        item: T,
        now: Instant,
        is_it: impl Fn(&T) -> bool,
        present: impl FnOnce(&mut Instant),
    ) -> Result<(), u64>
    where
        Q: Hash + quick_cache::Equivalent<O> + ToOwned<Owned = O> + ?Sized,
    {
        let in_use = match self.owners.get_or_insert_with(owner, || {
            Ok::<_, std::convert::Infallible>(InUse::default())
        }) {
            Ok(in_use) => in_use,
            Err(never) => match never {},
        };
        let mut in_use = in_use.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.window;
        in_use.retain(|(_, seen)| now.saturating_duration_since(*seen) < window);
        if let Some(entry) = in_use.iter_mut().find(|(i, _)| is_it(i)) {
            present(&mut entry.1);
            return Ok(());
        }
        if in_use.len() < self.max {
            in_use.push((item, now));
            return Ok(());
        }
        let oldest = in_use.iter().map(|(_, seen)| *seen).min().unwrap_or(now);
        let wait = (oldest + window).saturating_duration_since(now);
        Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }
}

impl PortLimit {
    /// Counts an authorized request for `target`: fine for a port its sandbox already has in
    /// use, or while it has fewer than `max_ports`; else [`Denial::TooManyPorts`].
    pub fn admit(&self, target: &PreviewTarget) -> Result<(), Denial> {
        let sandbox = target.sandbox_id.uuid().as_u128();
        self.admit_at(&sandbox, target.port, Instant::now())
            .map_err(|retry_after| Denial::TooManyPorts {
                limit: self.max,
                retry_after,
            })
    }
}

impl SandboxLimit {
    pub fn new(max: usize, window: Duration, max_tracked: u64) -> Self {
        SandboxLimit {
            unknown: DistinctLimit::new(max, window, max_tracked),
            described: quick_cache::sync::Cache::new(
                usize::try_from(max_tracked).unwrap_or(usize::MAX),
            ),
        }
    }

    /// Before Daytona is asked about `sandbox` for `person`: a sandbox this replica saw
    /// described is always asked about; otherwise the ask counts for `person` until
    /// [`settled`](Self::settled), and is refused with [`Denial::TooManySandboxes`] while `max`
    /// ids are counted for them (asks in flight included, so a burst of made-up ids is cut at
    /// `max` too).
    pub fn admit(&self, person: &str, sandbox: &SandboxId) -> Result<(), Denial> {
        let id = sandbox.uuid().as_u128();
        if self.described.get(&id).is_some() {
            return Ok(());
        }
        self.unknown
            .admit_with(
                person,
                (id, false),
                Instant::now(),
                |(i, _)| *i == id,
                |_| {},
            )
            .map_err(|retry_after| Denial::TooManySandboxes {
                limit: self.unknown.max,
                retry_after,
            })
    }

    /// Daytona answered about `sandbox`: `unknown` (404/400) keeps it counted for `person` for
    /// the window, and answered 404 again without asking; anything else stops counting it (a
    /// sandbox it described is remembered as real).
    pub fn settled(&self, person: &str, sandbox: &SandboxId, unknown: bool, described: bool) {
        let id = sandbox.uuid().as_u128();
        if described {
            self.described.insert(id, ());
        }
        if let Some(in_use) = self.unknown.owners.get(person) {
            let mut in_use = in_use.lock().unwrap_or_else(PoisonError::into_inner);
            if unknown {
                for entry in in_use.iter_mut().filter(|((i, _), _)| *i == id) {
                    entry.0.1 = true;
                }
            } else {
                in_use.retain(|((i, _), _)| *i != id);
            }
        }
    }

    /// Whether Daytona told `person`, within the window, that it does not know `sandbox`.
    pub fn known_unknown(&self, person: &str, sandbox: &SandboxId) -> bool {
        let id = sandbox.uuid().as_u128();
        self.unknown.owners.get(person).is_some_and(|in_use| {
            let now = Instant::now();
            in_use
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|((i, confirmed), seen)| {
                    *i == id
                        && *confirmed
                        && now.saturating_duration_since(*seen) < self.unknown.window
                })
        })
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
        assert_eq!(limit.admit_at(&A, 3000, t0), Ok(()));
        assert_eq!(
            limit.admit_at(&A, 3001, t0 + Duration::from_secs(10)),
            Ok(())
        );
        // A third port: refused until 3000 (least recently used) is 300 s old.
        assert_eq!(
            limit.admit_at(&A, 3002, t0 + Duration::from_secs(20)),
            Err(280)
        );
        // Ports in use keep working, and using one keeps it counted.
        assert_eq!(
            limit.admit_at(&A, 3000, t0 + Duration::from_secs(30)),
            Ok(())
        );
        assert_eq!(
            limit.admit_at(&A, 3002, t0 + Duration::from_secs(40)),
            Err(270),
            "3001 (seen at 10 s) is now the oldest"
        );
        // Another sandbox has its own bound.
        assert_eq!(
            limit.admit_at(&B, 3002, t0 + Duration::from_secs(40)),
            Ok(())
        );
        // Once 3001 has been unused for the window, a new port takes its place.
        assert_eq!(
            limit.admit_at(&A, 3002, t0 + Duration::from_secs(310)),
            Ok(())
        );
        assert_eq!(
            limit.admit_at(&A, 3001, t0 + Duration::from_secs(311)),
            Err(19)
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_a_second() {
        let limit = PortLimit::new(1, Duration::from_millis(1500), 100);
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(&A, 3000, t0), Ok(()));
        assert_eq!(limit.admit_at(&A, 3001, t0), Err(2));
        assert_eq!(
            limit.admit_at(&A, 3001, t0 + Duration::from_millis(1499)),
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
    fn a_person_is_refused_once_so_many_unknown_sandboxes_are_counted() {
        let limit = SandboxLimit::new(2, Duration::from_secs(60), 100);
        let id = |n: u128| -> SandboxId { uuid::Uuid::from_u128(n).to_string().parse().unwrap() };
        // A burst of made-up ids: asks in flight count, the third is refused at once.
        assert_eq!(limit.admit("alice", &id(1)), Ok(()));
        assert_eq!(limit.admit("alice", &id(2)), Ok(()));
        assert_eq!(limit.admit("alice", &id(1)), Ok(()), "the same ask again");
        assert!(matches!(
            limit.admit("alice", &id(3)),
            Err(Denial::TooManySandboxes { limit: 2, retry_after }) if (1..=60).contains(&retry_after)
        ));
        // In flight is not yet "unknown" (a real sandbox being described is not a 404).
        assert!(!limit.known_unknown("alice", &id(1)));
        limit.settled("alice", &id(1), true, false);
        assert!(limit.known_unknown("alice", &id(1)));
        // A real one stops counting, and is never refused again, even with the budget full.
        limit.settled("alice", &id(2), false, true);
        assert_eq!(limit.admit("alice", &id(4)), Ok(()));
        limit.settled("alice", &id(4), true, false);
        assert!(limit.admit("alice", &id(5)).is_err());
        assert_eq!(
            limit.admit("alice", &id(2)),
            Ok(()),
            "described here before"
        );
        assert_eq!(
            limit.admit("bob", &id(5)),
            Ok(()),
            "another person's own bound"
        );
    }

    #[test]
    fn tracked_sandboxes_are_bounded() {
        let limit = PortLimit::new(4, Duration::from_secs(60), 100);
        let now = Instant::now();
        for sandbox in 0..10_000u128 {
            limit.admit_at(&sandbox, 3000, now).unwrap();
        }
        assert!(limit.owners.len() <= 200, "{}", limit.owners.len());
    }
}
