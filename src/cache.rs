//! The one cache for answers fetched over the network (Daytona's preview tokens, token
//! introspection): bounded, expiring per entry, and coalescing.
//!
//! A `quick_cache` (S3-FIFO eviction): concurrent misses for one key wait on one placeholder
//! while its holder fetches. The fetched answer is kept as long as the caller's `keep` says
//! (values and errors alike: a "no such sandbox" can be kept too); an answer that is not kept is
//! handed to exactly the callers that were waiting for that fetch, then forgotten, so the next
//! caller fetches again. An expired entry is fetched again, once, by the first caller that finds
//! it.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An answer: a value or an error, shared by every caller that gets it.
pub type Answer<V, E> = Result<Arc<V>, Arc<E>>;

pub struct CoalescingCache<K, V, E> {
    cache: quick_cache::sync::Cache<K, Slot<V, E>>,
}

struct Slot<V, E> {
    answer: Answer<V, E>,
    life: Life,
}

#[derive(Clone, Copy)]
enum Life {
    /// Kept: the answer for whoever asks before this.
    Until(Instant),
    /// Not kept: the answer for whoever asked by then (those waiting for its fetch), never after.
    Ended(Instant),
}

impl<V, E> Clone for Slot<V, E> {
    fn clone(&self) -> Self {
        Slot {
            answer: self.answer.clone(),
            life: self.life,
        }
    }
}

impl<V, E> Slot<V, E> {
    /// The answer for a caller that asked at `asked`, if this slot may give it.
    fn for_caller(&self, asked: Instant) -> Option<Answer<V, E>> {
        let serves = match self.life {
            Life::Until(expires) => asked < expires,
            Life::Ended(at) => asked <= at,
        };
        serves.then(|| self.answer.clone())
    }

    /// The very same answer (not merely an equal one).
    fn same(&self, other: &Slot<V, E>) -> bool {
        match (&self.answer, &other.answer) {
            (Ok(a), Ok(b)) => Arc::ptr_eq(a, b),
            (Err(a), Err(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl<K, V, E> CoalescingCache<K, V, E>
where
    K: Eq + Hash + Clone,
{
    /// At most `max_entries` entries.
    pub fn new(max_entries: u64) -> Self {
        CoalescingCache {
            cache: quick_cache::sync::Cache::new(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
            ),
        }
    }

    /// A kept answer that is still good at `asked`, without waiting or fetching.
    pub fn cached(&self, key: &K, asked: Instant) -> Option<Answer<V, E>> {
        match self.cache.get(key) {
            Some(
                slot @ Slot {
                    life: Life::Until(_),
                    ..
                },
            ) => slot.for_caller(asked),
            _ => None,
        }
    }

    /// The answer for `key` for a caller that asked at `asked`: a kept one, the one a fetch in
    /// flight brings, or (once for all concurrent callers) `fetch`'s, kept for `keep(answer)`
    /// (`None`: not kept).
    pub async fn get_or_fetch<Fut>(
        &self,
        key: &K,
        asked: Instant,
        fetch: impl FnOnce() -> Fut,
        keep: impl FnOnce(&Result<V, E>) -> Option<Duration>,
    ) -> Answer<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        loop {
            match self.cache.get_value_or_guard_async(key).await {
                Ok(slot) => match slot.for_caller(asked) {
                    Some(answer) => return answer,
                    // Expired, or a failure that ended before this caller asked: drop it (unless
                    // someone replaced it meanwhile) and go round for a placeholder.
                    None => {
                        self.cache.remove_if(key, |current| current.same(&slot));
                    }
                },
                Err(placeholder) => {
                    let answer = fetch().await;
                    let now = Instant::now();
                    let life = match keep(&answer) {
                        Some(ttl) => Life::Until(now + ttl),
                        None => Life::Ended(now),
                    };
                    let slot = Slot {
                        answer: answer.map(Arc::new).map_err(Arc::new),
                        life,
                    };
                    // The callers waiting on the placeholder get the slot from it directly.
                    let _ = placeholder.insert(slot.clone());
                    if matches!(life, Life::Ended(_)) {
                        self.cache.remove_if(key, |current| current.same(&slot));
                    }
                    return slot.answer;
                }
            }
        }
    }

    pub fn remove(&self, key: &K) {
        self.cache.remove(key);
    }

    /// Keeps only the entries whose key passes `keep`.
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.cache.retain(|key, _| keep(key));
    }

    /// Drops the kept answers that have expired by `now`. Without this an expired entry stays
    /// (unused) until it is fetched again or evicted; a sweep keeps what memory holds to what
    /// may still be served (an introspection answer's claims, for one).
    pub fn remove_expired(&self, now: Instant) {
        self.cache
            .retain(|_, slot| !matches!(slot.life, Life::Until(expires) if expires <= now));
    }

    /// Entries held, expired ones included until they are fetched again or evicted.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_a_kept_answer_until_it_expires() {
        let cache: CoalescingCache<u8, usize, ()> = CoalescingCache::new(10);
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            tokio::task::yield_now().await;
            Ok(calls.fetch_add(1, SeqCst))
        };
        let asked = Instant::now();
        let keep = |_: &Result<usize, ()>| Some(Duration::from_secs(60));
        let answers = futures_util::future::join_all(
            (0..10).map(|_| cache.get_or_fetch(&1, asked, fetch, keep)),
        )
        .await;
        assert!(answers.iter().all(|a| **a.as_ref().unwrap() == 0));
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(
            cache.cached(&1, Instant::now()).map(|a| *a.unwrap()),
            Some(0)
        );
        // Past its life: fetched again.
        let later = Instant::now() + Duration::from_secs(61);
        assert!(cache.cached(&1, later).is_none());
        let again = cache.get_or_fetch(&1, later, fetch, keep).await;
        assert_eq!(*again.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_answer_not_kept_reaches_its_waiters_only() {
        let cache: CoalescingCache<u8, (), &str> = CoalescingCache::new(10);
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, SeqCst);
            tokio::task::yield_now().await;
            Err("down")
        };
        let asked = Instant::now();
        let answers = futures_util::future::join_all(
            (0..5).map(|_| cache.get_or_fetch(&1, asked, fetch, |_| None)),
        )
        .await;
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().unwrap_err().as_ref() == &"down")
        );
        assert_eq!(calls.load(SeqCst), 1);
        assert!(cache.is_empty());
        assert!(cache.cached(&1, Instant::now()).is_none());
        let _ = cache
            .get_or_fetch(&1, Instant::now(), fetch, |_| None)
            .await;
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_sweep_drops_expired_answers_only() {
        let cache: CoalescingCache<u8, u8, ()> = CoalescingCache::new(10);
        let asked = Instant::now();
        let _ = cache
            .get_or_fetch(
                &1,
                asked,
                || async { Ok(1) },
                |_| Some(Duration::from_secs(1)),
            )
            .await;
        let _ = cache
            .get_or_fetch(
                &2,
                asked,
                || async { Ok(2) },
                |_| Some(Duration::from_secs(600)),
            )
            .await;
        cache.remove_expired(Instant::now());
        assert_eq!(cache.len(), 2);
        cache.remove_expired(Instant::now() + Duration::from_secs(2));
        assert_eq!(cache.len(), 1);
        assert!(cache.cached(&2, Instant::now()).is_some());
    }

    #[tokio::test]
    async fn errors_can_be_kept_too_and_entries_removed() {
        let cache: CoalescingCache<u8, (), &str> = CoalescingCache::new(10);
        let fetch = || async { Err("no such sandbox") };
        let _ = cache
            .get_or_fetch(&1, Instant::now(), fetch, |_| Some(Duration::from_secs(60)))
            .await;
        let _ = cache
            .get_or_fetch(&2, Instant::now(), fetch, |_| Some(Duration::from_secs(60)))
            .await;
        assert!(cache.cached(&1, Instant::now()).unwrap().is_err());
        cache.remove(&1);
        assert!(cache.cached(&1, Instant::now()).is_none());
        cache.retain(|key| *key != 2);
        assert_eq!(cache.len(), 0);
    }
}
