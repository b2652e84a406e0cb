//! The preview-token cache in front of the Daytona client: coalescing, bounded, expiring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DaytonaError, Preview, PreviewSource, SandboxInfo};
use crate::authz::host::{PreviewTarget, SandboxId};
use crate::cache::CoalescingCache;
use crate::metrics::Metrics;

/// The preview-token cache: coalescing, bounded, expiring ([`CoalescingCache`]).
///
/// Keyed by the sandbox UUID's 128 bits and the port: about 250 bytes an entry where moka with a
/// `String` key took about 700 (bench/NOTES.md, finding 3). A success lives `ttl` from when it
/// was fetched. Daytona's 404 and 400 (the sandbox or port does not exist) live `negative_ttl`
/// (zero: not kept). Any other failure is handed to exactly the callers that were waiting for
/// that call, then forgotten, so the next request asks again.
pub struct PreviewCache<S> {
    source: Arc<S>,
    cache: CoalescingCache<PreviewKey, Preview, DaytonaError>,
    /// Sandboxes' descriptions (`GET /sandbox/{id}`, for the `[[policy]]` rules), by UUID: the
    /// same lifetimes, coalescing and bound as preview tokens.
    sandboxes: CoalescingCache<u128, SandboxInfo, DaytonaError>,
    /// `(ttl, negative_ttl)`, swapped by a reload of the config file (new answers only).
    ttls: arc_swap::ArcSwap<(Duration, Duration)>,
    metrics: Arc<Metrics>,
}

/// A sandbox UUID and a port, in 32 bytes and no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PreviewKey {
    sandbox: u128,
    port: u16,
}

impl PreviewKey {
    fn new(sandbox_id: &SandboxId, port: u16) -> Self {
        PreviewKey {
            sandbox: sandbox_id.uuid().as_u128(),
            port,
        }
    }
}

impl<S: PreviewSource> PreviewCache<S> {
    /// `ttl` for preview tokens, `negative_ttl` for "no such sandbox" answers (zero: not kept).
    pub fn new(
        source: Arc<S>,
        ttl: Duration,
        negative_ttl: Duration,
        max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        PreviewCache {
            source,
            metrics,
            ttls: arc_swap::ArcSwap::from_pointee((ttl, negative_ttl)),
            cache: CoalescingCache::new(max_entries),
            sandboxes: CoalescingCache::new(max_entries),
        }
    }

    /// New lifetimes for answers fetched from now on (entries already cached keep theirs).
    pub fn set_ttls(&self, ttl: Duration, negative_ttl: Duration) {
        self.ttls.store(Arc::new((ttl, negative_ttl)));
    }

    /// The preview for `target`, from the cache or (once for all concurrent callers) from Daytona.
    pub async fn get(&self, target: &PreviewTarget) -> Result<Arc<Preview>, Arc<DaytonaError>> {
        let asked = Instant::now();
        let key = PreviewKey::new(&target.sandbox_id, target.port);
        match self.cache.cached(&key, asked) {
            Some(Ok(preview)) => {
                self.metrics.cache_hit();
                return Ok(preview);
            }
            Some(Err(absent)) => {
                self.metrics.negative_cache_hit();
                return Err(absent);
            }
            None => {}
        }
        self.metrics.cache_miss();
        let answer = self
            .cache
            .get_or_fetch(
                &key,
                asked,
                || self.source.fetch(target),
                |answer| self.keep(answer),
            )
            .await;
        self.metrics.set_cache_entries(self.entry_count());
        answer
    }

    /// Daytona's description of a sandbox if the cache has it (a kept 404 included), without
    /// asking Daytona.
    pub fn cached_sandbox(
        &self,
        sandbox_id: &SandboxId,
    ) -> Option<Result<Arc<SandboxInfo>, Arc<DaytonaError>>> {
        let answer = self
            .sandboxes
            .cached(&sandbox_id.uuid().as_u128(), Instant::now());
        if answer.is_some() {
            self.metrics.description_hit();
        }
        answer
    }

    /// Daytona's description of a sandbox, from the cache or (once for all concurrent callers)
    /// from Daytona; kept as long as preview tokens are (a 404 as long as a negative answer).
    pub async fn sandbox(
        &self,
        sandbox_id: &SandboxId,
    ) -> Result<Arc<SandboxInfo>, Arc<DaytonaError>> {
        let asked = Instant::now();
        let key = sandbox_id.uuid().as_u128();
        if let Some(answer) = self.sandboxes.cached(&key, asked) {
            self.metrics.description_hit();
            return answer;
        }
        self.metrics.description_miss();
        let answer = self
            .sandboxes
            .get_or_fetch(
                &key,
                asked,
                || self.source.sandbox(sandbox_id),
                |answer| self.keep(answer),
            )
            .await;
        self.metrics
            .set_description_entries(self.sandboxes.len() as u64);
        answer
    }

    /// How long an answer is kept: `ttl` for a success, `negative_ttl` for Daytona's 404/400.
    fn keep<T>(&self, answer: &Result<T, DaytonaError>) -> Option<Duration> {
        let (ttl, negative_ttl) = **self.ttls.load();
        match answer {
            Ok(_) => Some(ttl),
            Err(DaytonaError::NotFound | DaytonaError::BadRequest(_))
                if !negative_ttl.is_zero() =>
            {
                Some(negative_ttl)
            }
            Err(_) => None,
        }
    }

    /// Forgets one port of a sandbox, or every port of it; and its description either way.
    pub async fn invalidate(&self, sandbox_id: &SandboxId, port: Option<u16>) {
        let key = PreviewKey::new(sandbox_id, port.unwrap_or(0));
        self.sandboxes.remove(&key.sandbox);
        match port {
            Some(_) => self.cache.remove(&key),
            None => self.cache.retain(|cached| cached.sandbox != key.sandbox),
        }
        self.metrics.set_cache_entries(self.entry_count());
        self.metrics
            .set_description_entries(self.sandboxes.len() as u64);
    }

    /// Drops the entries that have expired (see [`CoalescingCache::remove_expired`]).
    pub fn remove_expired(&self) {
        self.cache.remove_expired(Instant::now());
        self.sandboxes.remove_expired(Instant::now());
        self.metrics.set_cache_entries(self.entry_count());
        self.metrics
            .set_description_entries(self.sandboxes.len() as u64);
    }

    /// Entries held, expired ones included until they are refetched or evicted.
    pub fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daytona::Upstream;
    use crate::daytona::fixtures::{ID, target};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        fail: bool,
        /// Answer this instead (when set).
        error: Option<DaytonaError>,
    }

    impl PreviewSource for Counting {
        async fn sandbox(&self, sandbox_id: &SandboxId) -> Result<SandboxInfo, DaytonaError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(error) = &self.error {
                return Err(error.clone());
            }
            if self.fail {
                return Err(DaytonaError::Unavailable("down".into()));
            }
            SandboxInfo::new(
                sandbox_id.as_str().into(),
                "web".into(),
                "org".into(),
                "started".into(),
                Default::default(),
            )
            .map_err(DaytonaError::BadAnswer)
        }

        async fn fetch(&self, target: &PreviewTarget) -> Result<Preview, DaytonaError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(error) = &self.error {
                return Err(error.clone());
            }
            if self.fail {
                return Err(DaytonaError::Unavailable("down".into()));
            }
            Ok(Preview {
                token: format!("token-{n}"),
                upstream: Upstream {
                    tls: false,
                    authority: format!("{target}.proxy.localhost"),
                },
            })
        }
    }

    fn counting(fail: bool, ttl: Duration) -> Arc<PreviewCache<Counting>> {
        Arc::new(PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail,
                error: None,
            }),
            ttl,
            Duration::ZERO,
            100,
            Arc::default(),
        ))
    }

    /// A cache whose source always answers `error`, keeping 404/400 for `negative_ttl`.
    fn answering(error: DaytonaError, negative_ttl: Duration) -> Arc<PreviewCache<Counting>> {
        Arc::new(PreviewCache::new(
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail: false,
                error: Some(error),
            }),
            Duration::from_secs(60),
            negative_ttl,
            100,
            Arc::default(),
        ))
    }

    /// `n` concurrent callers of `get(target())`, each one's answer.
    async fn burst(
        cache: &Arc<PreviewCache<Counting>>,
        n: usize,
    ) -> Vec<Result<Arc<Preview>, Arc<DaytonaError>>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let cache = Arc::clone(cache);
                tokio::spawn(async move { cache.get(&target()).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(n);
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_call() {
        let cache = counting(false, Duration::from_secs(60));
        for answer in burst(&cache, 50).await {
            assert_eq!(answer.unwrap().token, "token-0");
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_invalidation_refetches() {
        let failing = counting(true, Duration::from_secs(60));
        assert!(failing.get(&target()).await.is_err());
        assert!(failing.get(&target()).await.is_err());
        assert_eq!(failing.source.calls.load(Ordering::SeqCst), 2);

        let cache = counting(false, Duration::from_secs(60));
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        cache.invalidate(&ID.parse().unwrap(), Some(3000)).await;
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-1");
        cache.invalidate(&ID.parse().unwrap(), None).await;
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-2");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failure_and_the_next_caller_asks_again() {
        let cache = counting(true, Duration::from_secs(60));
        for answer in burst(&cache, 50).await {
            assert!(answer.is_err());
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.entry_count(), 0, "a failure is not kept");
        assert!(cache.get(&target()).await.is_err());
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_entry_is_fetched_again_once_for_all_callers() {
        let cache = counting(false, Duration::from_millis(100));
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        assert_eq!(cache.get(&target()).await.unwrap().token, "token-0");
        tokio::time::sleep(Duration::from_millis(150)).await;
        for answer in burst(&cache, 20).await {
            assert_eq!(answer.unwrap().token, "token-1");
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.entry_count(), 1);
    }

    #[tokio::test]
    async fn ports_and_sandboxes_are_separate_entries_and_invalidation_is_per_sandbox() {
        let cache = counting(false, Duration::from_secs(60));
        let other = "1b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
        let at = |sandbox: &str, port| PreviewTarget {
            sandbox_id: sandbox.parse().unwrap(),
            port,
        };
        for t in [at(ID, 3000), at(ID, 8080), at(other, 3000)] {
            cache.get(&t).await.unwrap();
        }
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 3);
        cache.invalidate(&ID.parse().unwrap(), None).await;
        assert_eq!(cache.entry_count(), 1);
        cache.get(&at(other, 3000)).await.unwrap();
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 3, "still cached");
    }

    #[tokio::test]
    async fn no_such_sandbox_answers_are_kept_for_the_negative_ttl() {
        for error in [
            DaytonaError::NotFound,
            DaytonaError::BadRequest("Invalid port".into()),
        ] {
            let cache = answering(error.clone(), Duration::from_millis(200));
            for answer in burst(&cache, 20).await {
                assert_eq!(*answer.unwrap_err(), error);
            }
            for _ in 0..20 {
                assert_eq!(*cache.get(&target()).await.unwrap_err(), error);
            }
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1, "{error}");
            assert!(
                cache
                    .metrics
                    .encode()
                    .contains("daytona_authz_preview_cache_negative_hits_total 20")
            );
            // Invalidation forgets it at once; otherwise it expires.
            cache.invalidate(&ID.parse().unwrap(), None).await;
            assert!(cache.get(&target()).await.is_err());
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(cache.get(&target()).await.is_err());
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 3);
        }
    }

    #[tokio::test]
    async fn other_failures_and_a_zero_negative_ttl_keep_nothing() {
        for (error, negative_ttl) in [
            (DaytonaError::NotFound, Duration::ZERO),
            (
                DaytonaError::RateLimited {
                    retry_after: Some(7),
                },
                Duration::from_secs(60),
            ),
            (DaytonaError::Unauthorized(401), Duration::from_secs(60)),
        ] {
            let cache = answering(error.clone(), negative_ttl);
            assert!(cache.get(&target()).await.is_err());
            assert!(cache.get(&target()).await.is_err());
            assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2, "{error}");
            assert_eq!(cache.entry_count(), 0);
        }
    }

    #[tokio::test]
    async fn descriptions_are_coalesced_cached_and_forgotten_with_the_preview_token() {
        let cache = counting(false, Duration::from_secs(60));
        let id: SandboxId = ID.parse().unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = Arc::clone(&cache);
                let id = id.clone();
                tokio::spawn(async move { cache.sandbox(&id).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().id, ID);
        }
        assert_eq!(
            cache.source.calls.load(Ordering::SeqCst),
            1,
            "one call for 20"
        );
        cache.sandbox(&id).await.unwrap();
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 1, "cached");
        // Forgetting one port's preview token forgets the description too.
        cache.invalidate(&id, Some(3000)).await;
        cache.sandbox(&id).await.unwrap();
        assert_eq!(cache.source.calls.load(Ordering::SeqCst), 2);
        // A failure is not kept; a 404 is, for the negative TTL.
        let failing = counting(true, Duration::from_secs(60));
        assert!(failing.sandbox(&id).await.is_err());
        assert!(failing.sandbox(&id).await.is_err());
        assert_eq!(failing.source.calls.load(Ordering::SeqCst), 2);
        let gone = answering(DaytonaError::NotFound, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(
                *gone.sandbox(&id).await.unwrap_err(),
                DaytonaError::NotFound
            );
        }
        assert_eq!(gone.source.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_preview_key_is_the_uuid_as_a_number() {
        let key = PreviewKey::new(&ID.parse().unwrap(), 3000);
        assert_eq!(key.sandbox, 0x0b8f2a4e_6c1d_4f3a_9e2b_7d5c8a1f0e93);
        assert_eq!(key.port, 3000);
    }
}
