//! Failing dependencies over time (issue 8), end to end through a real Envoy on 127.0.0.1: a
//! Daytona API that has become slow. `proxy.rs` shows one Check answering 503 once the timeout
//! fires; this shows the same under repeated bursts, and that nothing piles up inside
//! daytona-authz while it lasts: every Check is answered in bounded time, the look-ups in flight
//! and the runtime's live tasks fall back to their resting level after each burst, the process's
//! memory does not grow burst over burst, nothing reaches the sandbox, and once Daytona is fast
//! again the very next request goes through (failures are never cached).

use std::time::{Duration, Instant};

use support::{AuthzOptions, Reply, Stack, bearer, host_for, now, parse_metrics, token_for};

/// `--daytona-api-timeout`: short, so a burst is over quickly.
const API_TIMEOUT: Duration = Duration::from_millis(250);
/// `--max-concurrent-api-calls`: fewer slots than distinct sandboxes in a burst, so Checks also
/// wait for a slot (and give up on it), not only on Daytona.
const SLOTS: usize = 8;
/// How long the slow Daytona takes to answer: far beyond the timeout, and beyond Envoy's own 6 s
/// ext_authz timeout, so a Check that waited for Daytona could not pass the bound below.
const DAYTONA_DELAY: Duration = Duration::from_secs(30);
const WAVES: usize = 5;
/// Per wave, Checks for sandboxes never asked about before (one look-up each) ...
const DISTINCT_PER_WAVE: usize = 40;
/// ... and Checks for one sandbox, which share a single look-up.
const SAME_PER_WAVE: usize = 10;
/// A correctness bound, not a performance assertion: a look-up (waiting for a slot and calling)
/// takes at most the API timeout (0.25 s here), so a wave of Checks sent at once must be
/// over long before Daytona's 30 s delay; the rest is slack for a busy 2-core machine.
const WAVE_BOUND: Duration = Duration::from_secs(10);
/// Tasks the runtime may hold above its resting level once a wave is over: the connection of the
/// scrape itself, a previous scrape's connection still closing, a gRPC connection Envoy opened
/// under load. A pile-up would leave one or more tasks per Check (50 a wave) behind.
const TASK_SLACK: i64 = 8;
/// RSS growth allowed between the first and the last wave: allocator noise, not accounting.
const RSS_SLACK_KIB: u64 = 8 * 1024;

#[tokio::test]
async fn a_slow_daytona_api_fails_closed_in_bounded_time_and_nothing_piles_up() {
    let stack = Stack::start_with(AuthzOptions {
        extra_args: vec![
            "--daytona-api-timeout".into(),
            format!("{}ms", API_TIMEOUT.as_millis()),
            "--max-concurrent-api-calls".into(),
            SLOTS.to_string(),
        ],
        ..Default::default()
    })
    .await;
    let pid = stack.authz.proc.pid();

    // Real sandboxes (each would be allowed), made before the fault: one set per wave, each asked
    // about only in its wave, and one shared by every wave.
    let mut waves = Vec::new();
    for _ in 0..WAVES {
        let sandboxes = futures_util::future::join_all(
            (0..DISTINCT_PER_WAVE).map(|_| stack.double.create_sandbox()),
        )
        .await;
        waves.push(sandboxes.into_iter().map(|s| s.id).collect::<Vec<_>>());
    }
    let same = stack.double.create_sandbox().await.id;

    // Warm up while Daytona is fast: a burst opens the connections Envoy keeps to daytona-authz
    // (one per Envoy worker) and daytona-authz keeps to Daytona; then the resting level.
    let warm = stack.host(3000);
    let warm_auth = bearer(&stack.token(None));
    let warm_headers = [("authorization", warm_auth.as_str())];
    let replies =
        futures_util::future::join_all((0..20).map(|_| stack.get(&warm, "/", &warm_headers))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "warm-up: {}", reply.body);
    }
    let forwarded_before = stack.double.proxy_requests().await.len();
    let calls_before = stack.double.api_calls().await;
    let baseline = settled(&stack, i64::MAX).await;
    eprintln!(
        "resting level: {baseline} live tasks, {} KiB RSS",
        rss_kib(pid)
    );

    stack.double.delay(DAYTONA_DELAY).await;
    let mut rss = Vec::new();
    for (wave, distinct) in waves.iter().enumerate() {
        let mut targets: Vec<&str> = distinct.iter().map(String::as_str).collect();
        targets.extend(std::iter::repeat_n(same.as_str(), SAME_PER_WAVE));
        let started = Instant::now();
        let replies =
            futures_util::future::join_all(targets.iter().map(|id| request(&stack, id))).await;
        let took = started.elapsed();
        assert!(
            took < WAVE_BOUND,
            "wave {wave}: {} Checks took {took:?} against a slow Daytona",
            replies.len()
        );
        for reply in &replies {
            assert_daytona_unavailable(reply);
        }
        let alive = settled(&stack, baseline + TASK_SLACK).await;
        rss.push(rss_kib(pid));
        eprintln!(
            "wave {wave}: {} Checks answered 503 in {took:?}; then {alive} live tasks, {} KiB RSS",
            replies.len(),
            rss[wave]
        );
    }

    // Daytona was asked (once per distinct sandbox, once per wave for the shared one, at most),
    // the timeout fired and some Checks gave up waiting for a slot: both paths were exercised.
    let metrics = stack.authz.metrics().await;
    let timeouts = sample(
        &metrics,
        "daytona_authz_daytona_api_calls_total{status=\"timeout\"}",
    );
    let overloaded = sample(
        &metrics,
        "daytona_authz_daytona_api_calls_total{status=\"overloaded\"}",
    );
    assert!(timeouts >= 1.0, "no API call timed out:\n{metrics}");
    assert!(overloaded >= 1.0, "no Check waited out a slot:\n{metrics}");
    let asked = stack.double.api_calls().await - calls_before;
    assert!(
        asked <= (WAVES * (DISTINCT_PER_WAVE + 1)) as u64,
        "{asked} calls reached Daytona: concurrent Checks for one sandbox were not coalesced"
    );
    assert_eq!(
        stack.double.proxy_requests().await.len(),
        forwarded_before,
        "a request reached a sandbox while Daytona was unavailable"
    );
    let (first, last) = (rss[0], rss[WAVES - 1]);
    assert!(
        last <= first + RSS_SLACK_KIB,
        "RSS grew wave over wave: {rss:?} KiB"
    );

    // Daytona is fast again: the next request for the shared sandbox, and for one sandbox of
    // every wave, goes through at once. The failures were not cached, and asking again is what
    // let them through.
    stack.double.fault(None).await;
    let calls_before = stack.double.api_calls().await;
    let reply = request(&stack, &same).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["sandbox_id"], same.as_str());
    for distinct in &waves {
        let reply = request(&stack, &distinct[0]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        stack.double.api_calls().await - calls_before,
        1 + WAVES as u64
    );
    assert_eq!(
        stack.double.proxy_requests().await.len(),
        forwarded_before + 1 + WAVES
    );
}

/// The API timeout bounds a whole look-up, the wait for a slot included. Were the slot wait and
/// the call bounded separately, a Check that queued for the only slot would outlive Envoy's 6 s
/// ext_authz timeout (4 s waiting + 4 s calling) and get Envoy's bare 503 instead of ours.
#[tokio::test]
async fn a_check_queued_for_an_api_slot_still_gets_our_answer_before_envoy_gives_up() {
    let stack = Stack::start_with(AuthzOptions::args(&[
        "--daytona-api-timeout",
        "4s",
        "--max-concurrent-api-calls",
        "1",
    ]))
    .await;
    let first = stack.double.create_sandbox().await.id;
    let second = stack.double.create_sandbox().await.id;
    stack.double.delay(DAYTONA_DELAY).await;

    let holder = request(&stack, &first);
    let queued = async {
        // Only once the first look-up holds the one slot.
        support::eventually(
            "the first look-up in flight",
            Duration::from_secs(10),
            || async {
                let metrics = stack.authz.metrics().await;
                let in_flight = sample(&metrics, "daytona_authz_daytona_api_lookups_in_flight");
                (in_flight >= 1.0).then_some(())
            },
        )
        .await;
        request(&stack, &second).await
    };
    let (holder, queued) = tokio::join!(holder, queued);
    assert_daytona_unavailable(&holder);
    assert_daytona_unavailable(&queued);
}

/// A GET through Envoy to port 3000 of `sandbox_id`, with a valid token for it.
async fn request(stack: &Stack, sandbox_id: &str) -> Reply {
    let auth = bearer(&token_for(sandbox_id, None, now() + 600));
    stack
        .get(
            &host_for(sandbox_id, 3000),
            "/",
            &[("authorization", auth.as_str())],
        )
        .await
}

/// daytona-authz's own answer to a Daytona outage (not Envoy's: JSON with our code).
fn assert_daytona_unavailable(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "daytona_unavailable",
        "{}",
        reply.body
    );
    assert_eq!(reply.header("retry-after"), Some("5"));
}

/// Waits until no Daytona look-up is in flight and the runtime holds at most `limit` live tasks;
/// returns that task count. On failure, what it saw last is printed with the test's output.
async fn settled(stack: &Stack, limit: i64) -> i64 {
    let last = std::cell::RefCell::new(String::new());
    let _report = ReportOnPanic(&last);
    support::eventually(
        &format!("no look-up in flight and at most {limit} live tasks"),
        Duration::from_secs(10),
        || async {
            let metrics = stack.authz.metrics().await;
            let in_flight = sample(&metrics, "daytona_authz_daytona_api_lookups_in_flight");
            let alive = sample(&metrics, "daytona_authz_runtime_alive_tasks") as i64;
            *last.borrow_mut() = format!("{in_flight} look-ups in flight, {alive} live tasks");
            (in_flight == 0.0 && alive <= limit).then_some(alive)
        },
    )
    .await
}

struct ReportOnPanic<'a>(&'a std::cell::RefCell<String>);

impl Drop for ReportOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last seen: {}", self.0.borrow());
        }
    }
}

/// The value of one series (`name` or `name{labels}`) in the Prometheus text; 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    parse_metrics(text).get(series).copied().unwrap_or(0.0)
}

/// The resident set size of a process, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}
