//! `check_load`: a load client for daytona-authz's ext_authz `Check`, with no Envoy in between.
//! `bench/run.sh` uses it for the gRPC-only scenarios; build it with
//! `cargo build --release -p load-tools`.
//!
//! It sends what Envoy sends (`envoy/envoy.yaml`: `encode_raw_headers`, a Bearer token or our
//! cookie, Envoy's forwarding headers), signs its own access tokens with the secret daytona-authz
//! verifies them with, and prints one JSON line of results. Modes:
//!
//! * `warm`: `--concurrency` Checks in flight over `--connections` HTTP/2 connections for
//!   `--warmup` seconds, then measured for `--duration` seconds. With `--sandboxes N` every
//!   request picks one of N sandboxes at random (their entries must be cached already).
//!   With `--rate R` the load is an open loop instead: Check `n` is due at `start + n / R`
//!   whatever became of the earlier ones, and its latency runs from when it was due (so a slow
//!   answer never lowers the offered load or hides behind it); `--concurrency` then caps the
//!   Checks in flight, and a due Check beyond the cap is counted as not sent.
//! * `stampede`: `--requests` Checks for one sandbox, all sent at once; the time until all are
//!   answered.
//! * `cold`: one Check for each of `--sandboxes` sandboxes (`--offset` on), `--concurrency` at a
//!   time: cold cache misses at scale, or filling the cache.
//!
//! Sandbox ids are `{seed:08x}-0000-4000-8000-{index:012x}`: well-formed UUIDs that the Daytona
//! test double accepts with `--any-sandbox`. With `--pid`, the CPU time daytona-authz spent during
//! the measured window and its peak RSS are read from `/proc` and reported as well.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use daytona_authz::authz::token::Claims;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use load_tools::{COOKIE_NAME, Latencies, sandbox_id};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Warm,
    Stampede,
    Cold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TokenIn {
    Bearer,
    Cookie,
}

/// Load for daytona-authz's ext_authz `Check` (see the module docs).
#[derive(Debug, Parser)]
struct Args {
    mode: Mode,
    /// daytona-authz's gRPC address.
    #[arg(long, default_value = "127.0.0.1:9191")]
    addr: String,
    /// The file holding daytona-authz's JWT secret (`--jwt-secret-file`).
    #[arg(long)]
    secret_file: std::path::PathBuf,
    /// daytona-authz's `--preview-domain`.
    #[arg(long, default_value = "preview.localhost")]
    domain: String,
    /// The sandbox (warm/stampede with one sandbox); else ids come from --seed.
    #[arg(long)]
    sandbox: Option<String>,
    #[arg(long, default_value_t = 0x0be4c4)]
    seed: u32,
    #[arg(long, default_value_t = 1)]
    sandboxes: usize,
    /// Warm: as many distinct access tokens for each sandbox (they differ in `exp` by a
    /// second each), one picked at random per request.
    #[arg(long, default_value_t = 1)]
    tokens_per_sandbox: usize,
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[arg(long, value_enum, default_value_t = TokenIn::Bearer)]
    token_in: TokenIn,
    #[arg(long, default_value_t = 2)]
    connections: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Stampede: Checks sent at once.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm: an open loop at this many Checks per second (instead of `--concurrency` in a
    /// closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// daytona-authz's process id: report its CPU time and peak RSS for the measured window.
    #[arg(long)]
    pid: Option<u32>,
    /// Worker threads of this client (fixed, so that `TOKIO_WORKER_THREADS` given to
    /// daytona-authz does not change the load).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One sandbox's public host and the header carrying its access token.
struct Target {
    host: String,
    token_header: (&'static str, String),
}

/// Signs one access token per sandbox (and `--tokens-per-sandbox`) as any issuer would: the
/// claims README documents, `sandbox_id`, `exp` and `ports` (3000), nothing else.
fn targets(args: &Args, ids: impl Iterator<Item = String>) -> Vec<Target> {
    let signer = load_tools::signer(&args.secret_file)
        .unwrap_or_else(|e| panic!("readable --secret-file: {e}"));
    let exp = daytona_authz::authz::token::now() + 3600;
    let mut targets = Vec::new();
    for id in ids {
        let host = format!("3000-{id}.{}", args.domain);
        for k in 0..args.tokens_per_sandbox.max(1) as u64 {
            let claims = Claims {
                sandbox_id: id.clone(),
                exp: exp + k,
                ports: Some(vec![3000]),
                iss: None,
                aud: None,
            };
            let token = signer.sign(&claims).expect("signable claims");
            let token_header = match args.token_in {
                TokenIn::Bearer => ("authorization", format!("Bearer {token}")),
                TokenIn::Cookie => ("cookie", format!("theme=dark; {COOKIE_NAME}={token}")),
            };
            targets.push(Target {
                host: host.clone(),
                token_header,
            });
        }
    }
    targets
}

fn peer(address: &str, port: u32) -> attribute_context::Peer {
    attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// A `CheckRequest` shaped like the one Envoy sends for `GET /` from curl.
fn check_request(target: &Target, request_id: u64) -> CheckRequest {
    let id = format!("{request_id:016x}-bench");
    let raw = |key: &str, value: &str| HeaderValue {
        key: key.to_owned(),
        value: String::new(),
        raw_value: value.as_bytes().to_vec(),
    };
    let headers = vec![
        raw(":authority", &target.host),
        raw(":path", "/"),
        raw(":method", "GET"),
        raw(":scheme", "http"),
        raw("user-agent", "curl/8.5.0"),
        raw("accept", "*/*"),
        raw(target.token_header.0, &target.token_header.1),
        raw("x-forwarded-for", "127.0.0.1"),
        raw("x-forwarded-proto", "http"),
        raw("x-envoy-internal", "true"),
        raw("x-request-id", &id),
        raw("x-forwarded-host", &target.host),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("127.0.0.1", 40000)),
            destination: Some(peer("127.0.0.1", 8080)),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    id,
                    method: "GET".into(),
                    path: "/".into(),
                    host: target.host.clone(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    header_map: Some(HeaderMap { headers }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// How a Check ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// OK: forwarded (with our header mutations).
    Allowed,
    /// A local reply (denial, redirect): the HTTP status Envoy would send.
    Replied(i32),
    /// The RPC itself failed (Envoy would answer 503).
    RpcError,
}

async fn check(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> Answer {
    match client.check(request).await {
        Ok(response) => {
            let response = response.into_inner();
            match response.http_response {
                Some(HttpResponse::OkResponse(_))
                    if response.status.as_ref().is_some_and(|s| s.code == 0) =>
                {
                    Answer::Allowed
                }
                Some(HttpResponse::DeniedResponse(denied)) => {
                    Answer::Replied(denied.status.map_or(403, |s| s.code))
                }
                _ => Answer::Replied(403),
            }
        }
        Err(_) => Answer::RpcError,
    }
}

/// What the Check load saw, merged over tasks.
#[derive(Default)]
struct Tally {
    latencies: Latencies,
    allowed: u64,
    replied: std::collections::BTreeMap<i32, u64>,
    rpc_errors: u64,
}

impl Tally {
    fn add(&mut self, answer: Answer, latency: Duration) {
        self.latencies.record(latency);
        match answer {
            Answer::Allowed => self.allowed += 1,
            Answer::Replied(status) => *self.replied.entry(status).or_default() += 1,
            Answer::RpcError => self.rpc_errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        self.allowed += other.allowed;
        for (status, n) in other.replied {
            *self.replied.entry(status).or_default() += n;
        }
        self.rpc_errors += other.rpc_errors;
    }

    fn json(self, seconds: f64) -> serde_json::Value {
        let n = self.latencies.len();
        let pct = |p: f64| self.latencies.percentile_ms(p);
        let errors = self.rpc_errors + self.replied.values().sum::<u64>();
        serde_json::json!({
            "requests": n,
            "seconds": seconds,
            "rps": if seconds > 0.0 { n as f64 / seconds } else { 0.0 },
            "allowed": self.allowed,
            "errors": errors,
            "rpc_errors": self.rpc_errors,
            "replied": self
                .replied
                .iter()
                .map(|(status, n)| (status.to_string(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>(),
            "p50_ms": pct(50.0),
            "p99_ms": pct(99.0),
            "p999_ms": pct(99.9),
            "max_ms": self.latencies.max_ms(),
        })
    }
}

/// CPU seconds (user + system, all threads) of a process so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some(ticks as f64 / 100.0)
}

/// A field of `/proc/PID/status` in KiB (e.g. `VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS (Linux `clear_refs` 5).
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

async fn connect(args: &Args) -> Vec<AuthorizationClient<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{}", args.addr))
            .expect("valid --addr")
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", args.addr));
        clients.push(AuthorizationClient::new(channel));
    }
    clients
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// The targets of a warm run: `--sandbox`, or `--sandboxes` ids from `--seed` and `--offset`.
fn warm_targets(args: &Args) -> Vec<Target> {
    match &args.sandbox {
        Some(id) => targets(args, std::iter::once(id.clone())),
        None => targets(
            args,
            (args.offset..args.offset + args.sandboxes.max(1)).map(|i| sandbox_id(args.seed, i)),
        ),
    }
}

/// xorshift64: a cheap, even spread of requests over the targets.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn warm(args: &Args) -> serde_json::Value {
    if let Some(rate) = args.rate {
        return open_loop(args, rate).await;
    }
    let targets = Arc::new(warm_targets(args));
    let clients = connect(args).await;
    let phase = Arc::new(AtomicU8::new(WARMING));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..args.concurrency.max(1) {
        let mut client = clients[task % clients.len()].clone();
        let (targets, phase, next_id) = (targets.clone(), phase.clone(), next_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (task as u64 + 1);
            loop {
                let state = phase.load(Ordering::Relaxed);
                if state == STOPPED {
                    return tally;
                }
                let target = &targets[(next_random(&mut rng) % targets.len() as u64) as usize];
                let request = check_request(target, next_id.fetch_add(1, Ordering::Relaxed));
                let start = Instant::now();
                let answer = check(&mut client, request).await;
                if state == MEASURING && phase.load(Ordering::Relaxed) == MEASURING {
                    tally.add(answer, start.elapsed());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    if let Some(pid) = args.pid {
        reset_peak_rss(pid);
    }
    let cpu_before = args.pid.and_then(cpu_seconds);
    phase.store(MEASURING, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    phase.store(STOPPED, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after = args.pid.and_then(cpu_seconds);
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("load task"));
    }
    let mut result = tally.json(seconds);
    add_process_figures(&mut result, args.pid, cpu_before, cpu_after);
    result["sandboxes"] = targets.len().into();
    result
}

/// `warm --rate`: Checks due at a fixed rate, paced by a thread of their own (tokio's timer ticks
/// in milliseconds, which would send them in bursts), each answered Check timed from when it
/// was due.
async fn open_loop(args: &Args, rate: f64) -> serde_json::Value {
    assert!(
        rate.is_finite() && rate > 0.0,
        "--rate must be a positive number"
    );
    let targets = Arc::new(warm_targets(args));
    let clients = connect(args).await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Handle::current();
    let (warmup, duration, cap) = (args.warmup, args.duration, args.concurrency.max(1));
    let pacer = {
        let (targets, in_flight) = (targets.clone(), in_flight.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
            let (mut not_sent, mut max_lag) = (0_u64, Duration::ZERO);
            for n in 0_u64.. {
                let offset = Duration::from_secs_f64(n as f64 / rate);
                if offset.as_secs_f64() >= warmup + duration {
                    break;
                }
                let due = start + offset;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let measured = offset.as_secs_f64() >= warmup;
                if measured {
                    max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
                }
                if in_flight.load(Ordering::Relaxed) >= cap {
                    not_sent += u64::from(measured);
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let target = &targets[(next_random(&mut rng) % targets.len() as u64) as usize];
                let request = check_request(target, n);
                let mut client = clients[n as usize % clients.len()].clone();
                let (in_flight, done) = (in_flight.clone(), done_tx.clone());
                runtime.spawn(async move {
                    let answer = check(&mut client, request).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    if measured {
                        let _ = done.send((answer, due.elapsed()));
                    }
                });
            }
            (not_sent, max_lag)
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    if let Some(pid) = args.pid {
        reset_peak_rss(pid);
    }
    let cpu_before = args.pid.and_then(cpu_seconds);
    let start = Instant::now();
    let (not_sent, max_lag) = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .expect("pacer task")
        .expect("pacer thread");
    // The last Checks sent are answered within milliseconds; wait for them, boundedly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after = args.pid.and_then(cpu_seconds);
    let mut tally = Tally::default();
    while let Ok((answer, latency)) = done_rx.try_recv() {
        tally.add(answer, latency);
    }
    let mut result = tally.json(seconds);
    add_process_figures(&mut result, args.pid, cpu_before, cpu_after);
    result["sandboxes"] = targets.len().into();
    result["rate"] = rate.into();
    result["not_sent"] = not_sent.into();
    result["unanswered"] = in_flight.load(Ordering::Relaxed).into();
    result["max_send_lag_ms"] = (max_lag.as_secs_f64() * 1000.0).into();
    result
}

/// CPU seconds of daytona-authz in the window, per request, and its RSS.
fn add_process_figures(
    result: &mut serde_json::Value,
    pid: Option<u32>,
    cpu_before: Option<f64>,
    cpu_after: Option<f64>,
) {
    let Some(pid) = pid else { return };
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = after - before;
        result["authz_cpu_s"] = cpu.into();
        let requests = result["requests"].as_f64().unwrap_or(0.0);
        if requests > 0.0 {
            result["authz_cpu_us_per_request"] = (cpu / requests * 1e6).into();
        }
    }
    result["authz_rss_kib"] = status_kib(pid, "VmRSS").into();
    result["authz_peak_rss_kib"] = status_kib(pid, "VmHWM").into();
}

async fn stampede(args: &Args) -> serde_json::Value {
    let id = args
        .sandbox
        .clone()
        .unwrap_or_else(|| sandbox_id(args.seed, args.offset));
    let target = targets(args, std::iter::once(id.clone()))
        .pop()
        .expect("one");
    let clients = connect(args).await;
    let requests: Vec<CheckRequest> = (0..args.requests)
        .map(|i| check_request(&target, i as u64))
        .collect();
    let go = Arc::new(tokio::sync::Barrier::new(args.requests + 1));
    let mut tasks = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let mut client = clients[i % clients.len()].clone();
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let start = Instant::now();
            let answer = check(&mut client, request).await;
            (answer, start.elapsed(), Instant::now())
        }));
    }
    let cpu_before = args.pid.and_then(cpu_seconds);
    go.wait().await;
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut last = start;
    for task in tasks {
        let (answer, latency, done) = task.await.expect("stampede task");
        tally.add(answer, latency);
        last = last.max(done);
    }
    let all_answered = last.duration_since(start).as_secs_f64();
    let mut result = tally.json(all_answered);
    add_process_figures(
        &mut result,
        args.pid,
        cpu_before,
        args.pid.and_then(cpu_seconds),
    );
    result["sandbox"] = id.into();
    result["all_answered_ms"] = (all_answered * 1000.0).into();
    result
}

async fn cold(args: &Args) -> serde_json::Value {
    let targets = Arc::new(targets(
        args,
        (args.offset..args.offset + args.sandboxes).map(|i| sandbox_id(args.seed, i)),
    ));
    let clients = connect(args).await;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = args.pid.and_then(cpu_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..args.concurrency.max(1) {
        let mut client = clients[task % clients.len()].clone();
        let (targets, next) = (targets.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else {
                    return tally;
                };
                let request = check_request(target, i as u64);
                let start = Instant::now();
                let answer = check(&mut client, request).await;
                tally.add(answer, start.elapsed());
            }
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("cold task"));
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut result = tally.json(seconds);
    add_process_figures(
        &mut result,
        args.pid,
        cpu_before,
        args.pid.and_then(cpu_seconds),
    );
    result["sandboxes"] = targets.len().into();
    result
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.mode {
            Mode::Warm => warm(&args).await,
            Mode::Stampede => stampede(&args).await,
            Mode::Cold => cold(&args).await,
        }
    });
    println!("{result}");
}
