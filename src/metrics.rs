//! Prometheus metrics (served at `/metrics` in the text format): decisions by result and reason,
//! Check latency, Daytona API calls by status and latency, Daytona look-ups in flight, cache
//! hits, misses and size, cached "no such sandbox" answers, look-ups refused during a Daytona
//! rate-limit back-off, secret reloads, readiness, the runtime's live task count and build
//! info. No label ever carries a token, a host or a sandbox id: label values come from small
//! fixed sets, so cardinality stays bounded.
//!
//! The two gauges that show whether work piles up while Daytona is slow:
//! `daytona_authz_daytona_api_lookups_in_flight` (preview-url look-ups started and not finished,
//! whether waiting for one of `--max-concurrent-api-calls` slots or calling; concurrent Checks
//! for one sandbox port share one look-up) and `daytona_authz_runtime_alive_tasks` (tasks alive
//! on the tokio runtime, read at scrape time: Checks being answered, connections, background
//! work). Both return to their resting level once a burst is over.
//!
//! Whether `--worker-threads` should be raised: `rate(daytona_authz_runtime_busy_seconds_total[1m])
//! / daytona_authz_runtime_workers` is the share of time the runtime's threads were busy; near 1,
//! Checks queue behind each other.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow`, `deny` or `reply` (answered at the edge: preflight, link-to-cookie redirect).
    pub result: &'static str,
    /// The denial code (`invalid_token`, ...), or `ok`, `preflight`, `link_to_cookie`.
    pub reason: &'static str,
}

/// Decisions on routes that name themselves (`daytona_authz.route`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteDecisionLabels {
    /// The route's name; `other` past [`MAX_ROUTE_LABELS`] distinct names.
    pub route: String,
    pub result: &'static str,
    pub reason: &'static str,
}

/// The route names counted by name: those `--envoy-config` names (`fixed`), or the first
/// [`MAX_ROUTE_LABELS`] seen.
#[derive(Debug, Default)]
struct RouteNames {
    names: std::collections::HashSet<String>,
    fixed: bool,
}

/// Distinct route names with series of their own; any further name is counted as `other`, so
/// a misconfigured Envoy cannot grow the metrics without bound.
pub const MAX_ROUTE_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    /// The HTTP status, or `timeout`, `connect_error`, `error`, `overloaded`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    route_decisions: Family<RouteDecisionLabels, Counter>,
    route_names: std::sync::Mutex<RouteNames>,
    check_seconds: Histogram,
    api_calls: Family<ApiCallLabels, Counter>,
    api_seconds: Histogram,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_entries: Gauge,
    description_hits: Counter,
    description_misses: Counter,
    description_entries: Gauge,
    negative_cache_hits: Counter,
    api_backoff_refusals: Counter,
    secret_reloads: Family<ResultLabels, Counter>,
    ready: Gauge,
    api_lookups_in_flight: Gauge,
    runtime_alive_tasks: Gauge,
    runtime_workers: Gauge,
    /// Busy time summed over the runtime's workers, brought up to date at scrape time (under the
    /// lock, so two scrapes at once cannot add the same time twice).
    runtime_busy_seconds: std::sync::Mutex<Counter<f64, AtomicU64>>,
    introspection_calls: Family<ResultLabels, Counter>,
    introspection_seconds: Histogram,
    introspection_cache_hits: Counter,
    introspection_cache_misses: Counter,
    revocation_store_restores: Counter,
    introspection_shed: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("daytona_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Check decisions by result and reason",
            decisions.clone(),
        );
        let route_decisions = Family::<RouteDecisionLabels, Counter>::default();
        registry.register(
            "route_decisions",
            "Check decisions on routes named by daytona_authz.route, by route, result and reason",
            route_decisions.clone(),
        );
        // 50 µs .. ~6.5 s: a warm Check is microseconds, a cold one waits on Daytona.
        let check_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "check_duration_seconds",
            "Time to answer a Check, Daytona API call included when there was one",
            check_seconds.clone(),
        );
        let api_calls = Family::<ApiCallLabels, Counter>::default();
        registry.register(
            "daytona_api_calls",
            "Calls to the Daytona preview-url API by outcome",
            api_calls.clone(),
        );
        let api_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "daytona_api_duration_seconds",
            "Latency of Daytona API calls",
            api_seconds.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "preview_cache_hits",
            "Preview-token look-ups answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "preview_cache_misses",
            "Preview-token look-ups that needed (or waited on) a Daytona API call",
            cache_misses.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "preview_cache_entries",
            "Preview tokens in the cache",
            cache_entries.clone(),
        );
        let description_hits = Counter::default();
        registry.register(
            "sandbox_description_cache_hits",
            "Sandbox descriptions (for the [[policy]] rules) answered from the cache, a kept 404 \
             included",
            description_hits.clone(),
        );
        let description_misses = Counter::default();
        registry.register(
            "sandbox_description_cache_misses",
            "Sandbox descriptions that needed (or waited on) a Daytona GET /sandbox/{id}",
            description_misses.clone(),
        );
        let description_entries = Gauge::default();
        registry.register(
            "sandbox_description_cache_entries",
            "Sandbox descriptions in the cache",
            description_entries.clone(),
        );
        let negative_cache_hits = Counter::default();
        registry.register(
            "preview_cache_negative_hits",
            "Preview-token look-ups answered from a cached \"no such sandbox\" (Daytona's 404 or \
             400, kept --negative-cache-ttl) without an API call",
            negative_cache_hits.clone(),
        );
        let api_backoff_refusals = Counter::default();
        registry.register(
            "daytona_api_backoff_refusals",
            "Daytona look-ups refused without a call because Daytona rate limited the API key \
             (429) and its Retry-After has not passed",
            api_backoff_refusals.clone(),
        );
        let secret_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "secret_reloads",
            "Reloads of the config file and secrets on SIGHUP, by result",
            secret_reloads.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when ready to serve (keys loaded, Daytona answered or the grace passed)",
            ready.clone(),
        );
        let api_lookups_in_flight = Gauge::default();
        registry.register(
            "daytona_api_lookups_in_flight",
            "Daytona preview-url look-ups in progress, waiting for an API call slot or calling \
             (concurrent Checks for one sandbox port share one look-up)",
            api_lookups_in_flight.clone(),
        );
        let runtime_alive_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tasks alive on the async runtime, read at scrape time (Checks being answered, \
             connections, background work)",
            runtime_alive_tasks.clone(),
        );
        let runtime_workers = Gauge::default();
        registry.register(
            "runtime_workers",
            "Threads of the async runtime (--worker-threads), read at scrape time",
            runtime_workers.clone(),
        );
        let runtime_busy_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "runtime_busy_seconds",
            "Time the async runtime's threads spent running tasks, summed over them; its rate \
             divided by runtime_workers near 1 means raise --worker-threads",
            runtime_busy_seconds.clone(),
        );
        let introspection_calls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "introspection_calls",
            "Token introspection calls by result (active, inactive, refused, rate_limited, \
             server_error, bad_answer, timeout, connect_error, error, overloaded)",
            introspection_calls.clone(),
        );
        let introspection_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "introspection_duration_seconds",
            "Latency of token introspection calls",
            introspection_seconds.clone(),
        );
        let introspection_cache_hits = Counter::default();
        registry.register(
            "introspection_cache_hits",
            "Token introspections answered from the cache",
            introspection_cache_hits.clone(),
        );
        let introspection_cache_misses = Counter::default();
        registry.register(
            "introspection_cache_misses",
            "Token introspections that needed (or waited on) a call to the endpoint",
            introspection_cache_misses.clone(),
        );
        let revocation_store_restores = Counter::default();
        registry.register(
            "revocation_store_restores",
            "Times Redis was found to have lost revocations (restarted without persistence, \
             flushed, failed over to a stale replica) and this replica wrote back the ones it held",
            revocation_store_restores.clone(),
        );
        let introspection_shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "introspection_shed",
            "Introspections of never-seen tokens refused (503) without calling the endpoint, by \
             the bound they were over (concurrency, rate)",
            introspection_shed.clone(),
        );
        // Both series exist from the start, so a rate over them is 0 rather than nothing.
        for reason in ["concurrency", "rate"] {
            drop(introspection_shed.get_or_create(&ReasonLabels { reason }));
        }
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information", build_info);
        Metrics {
            registry,
            decisions,
            route_decisions,
            route_names: Default::default(),
            check_seconds,
            api_calls,
            api_seconds,
            cache_hits,
            cache_misses,
            cache_entries,
            description_hits,
            description_misses,
            description_entries,
            negative_cache_hits,
            api_backoff_refusals,
            secret_reloads,
            ready,
            api_lookups_in_flight,
            runtime_alive_tasks,
            runtime_workers,
            runtime_busy_seconds: std::sync::Mutex::new(runtime_busy_seconds),
            introspection_calls,
            introspection_seconds,
            introspection_cache_hits,
            introspection_cache_misses,
            revocation_store_restores,
            introspection_shed,
        }
    }

    /// The counter the Redis revocation store bumps each time it restores lost data.
    pub fn revocation_store_restores(&self) -> Counter {
        self.revocation_store_restores.clone()
    }

    pub fn decision(&self, result: &'static str, reason: &'static str, elapsed: Duration) {
        self.decisions
            .get_or_create(&DecisionLabels { result, reason })
            .inc();
        self.check_seconds.observe(elapsed.as_secs_f64());
    }

    /// The route names of the deployment (`--envoy-config`): only these are counted by name from
    /// now on. None: the first [`MAX_ROUTE_LABELS`] names seen are.
    pub fn set_known_routes(&self, names: impl IntoIterator<Item = String>) {
        let names: std::collections::HashSet<String> = names.into_iter().collect();
        let mut known = self
            .route_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.is_empty() {
            // The names seen so far keep their series (they exist already) and count towards
            // the bound: a reload cannot make room for another 64.
            known.fixed = false;
            return;
        }
        known.fixed = true;
        known.names.extend(names);
    }

    /// Counts a decision on a named route as well (see [`Metrics::set_known_routes`]).
    pub fn route_decision(&self, route: &str, result: &'static str, reason: &'static str) {
        let route = {
            let mut known = self
                .route_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.names.contains(route) {
                route
            } else if !known.fixed && known.names.len() < MAX_ROUTE_LABELS {
                known.names.insert(route.to_owned());
                route
            } else {
                "other"
            }
        };
        self.route_decisions
            .get_or_create(&RouteDecisionLabels {
                route: route.to_owned(),
                result,
                reason,
            })
            .inc();
    }

    pub fn api_call(&self, status: &str, elapsed: Duration) {
        self.api_calls
            .get_or_create(&ApiCallLabels {
                status: status.to_owned(),
            })
            .inc();
        self.api_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts one Daytona look-up as in flight until the returned guard is dropped (finished,
    /// failed or cancelled alike).
    pub fn api_lookup(&self) -> InFlight {
        self.api_lookups_in_flight.inc();
        InFlight(self.api_lookups_in_flight.clone())
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn negative_cache_hit(&self) {
        self.negative_cache_hits.inc();
    }

    pub fn api_backoff_refusal(&self) {
        self.api_backoff_refusals.inc();
    }

    pub fn description_hit(&self) {
        self.description_hits.inc();
    }

    pub fn description_miss(&self) {
        self.description_misses.inc();
    }

    pub fn set_description_entries(&self, entries: u64) {
        self.description_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn set_cache_entries(&self, entries: u64) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn secret_reload(&self, result: &'static str) {
        self.secret_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn introspection_call(&self, result: &'static str, elapsed: Duration) {
        self.introspection_calls
            .get_or_create(&ResultLabels { result })
            .inc();
        self.introspection_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn introspection_cache_hit(&self) {
        self.introspection_cache_hits.inc();
    }

    pub fn introspection_cache_miss(&self) {
        self.introspection_cache_misses.inc();
    }

    /// A never-seen token refused because `reason` (`concurrency`, `rate`) was used up.
    pub fn introspection_shed(&self, reason: &'static str) {
        self.introspection_shed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition. Gauges read at scrape time are refreshed first.
    pub fn encode(&self) -> String {
        // Outside a runtime (unit tests) the gauge keeps its last value.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let runtime = runtime.metrics();
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.runtime_alive_tasks
                .set(gauge(runtime.num_alive_tasks()));
            self.runtime_workers.set(gauge(runtime.num_workers()));
            let busy: f64 = (0..runtime.num_workers())
                .map(|worker| runtime.worker_total_busy_duration(worker).as_secs_f64())
                .sum();
            let counter = self
                .runtime_busy_seconds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let behind = busy - counter.get();
            if behind > 0.0 {
                counter.inc_by(behind);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A Daytona look-up in flight: decrements the gauge when dropped.
#[derive(Debug)]
#[must_use = "the look-up counts as in flight only while the guard lives"]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let metrics = Metrics::new();
        metrics.decision("deny", "invalid_token", Duration::from_micros(80));
        metrics.api_call("200", Duration::from_millis(12));
        metrics.cache_hit();
        metrics.negative_cache_hit();
        metrics.api_backoff_refusal();
        let text = metrics.encode();
        for needle in [
            "daytona_authz_preview_cache_negative_hits_total 1",
            "daytona_authz_daytona_api_backoff_refusals_total 1",
            "daytona_authz_decisions_total{result=\"deny\",reason=\"invalid_token\"} 1",
            "daytona_authz_daytona_api_calls_total{status=\"200\"} 1",
            "daytona_authz_preview_cache_hits_total 1",
            "daytona_authz_check_duration_seconds_bucket",
            "daytona_authz_build_info{version=",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }

    #[test]
    fn lookups_in_flight_count_until_the_guard_drops() {
        let metrics = Metrics::new();
        let first = metrics.api_lookup();
        let second = metrics.api_lookup();
        assert!(
            metrics
                .encode()
                .contains("daytona_authz_daytona_api_lookups_in_flight 2")
        );
        drop(first);
        drop(second);
        assert!(
            metrics
                .encode()
                .contains("daytona_authz_daytona_api_lookups_in_flight 0")
        );
    }

    /// The value of the unlabelled sample `name` in an exposition; panics when it is missing.
    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn runtime_workers_and_busy_time_are_read_at_scrape_time() {
        let metrics = Metrics::new();
        let busy = |text: &str| value(text, "daytona_authz_runtime_busy_seconds_total");
        let first = metrics.encode();
        assert_eq!(value(&first, "daytona_authz_runtime_workers"), 1.0);
        // A task that keeps the (current-thread) runtime busy for 50 ms; the runtime hands its
        // counts over when it next parks, hence the sleep.
        tokio::spawn(async {
            let spin = std::time::Instant::now();
            while spin.elapsed() < Duration::from_millis(50) {
                std::hint::spin_loop();
            }
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = metrics.encode();
        assert!(busy(&second) - busy(&first) >= 0.04, "{first}\n{second}");
    }

    #[tokio::test]
    async fn alive_tasks_are_read_at_scrape_time() {
        let metrics = Metrics::new();
        let alive = |text: &str| value(text, "daytona_authz_runtime_alive_tasks");
        let before = alive(&metrics.encode());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stopped.await;
        });
        assert_eq!(alive(&metrics.encode()), before + 1.0);
        stop.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(alive(&metrics.encode()), before);
    }
}
