//! `soak`: the load driver of `bench/soak.sh` (run that: it starts Envoy, daytona-authz and the
//! Daytona test double, samples daytona-authz's memory and CPU and writes the figures into
//! BENCHMARKS.md). Build it with `cargo build --release -p load-tools`.
//!
//! It sends requests through Envoy's listener **open-loop**: request `n` is due at
//! `start + n / --rate`, whatever happened to the earlier ones, so a slow answer never lowers the
//! offered load (latencies are measured from the time a request was due, not from when it could
//! be sent). Each request belongs to one category of a fixed mix and carries a known expected
//! outcome, checked on every answer:
//!
//! | category | request | expected |
//! |---|---|---|
//! | `bearer` | `Authorization: Bearer` token for a warm sandbox and port | 200 from that sandbox's echo app, no token reaching it |
//! | `cookie` | `Cookie: theme=dark; daytona_authz=<token>` | 200, the app sees `theme=dark` only |
//! | `link_program` | `?access_token=` without `Accept: text/html` | 200, the app's path without `access_token` |
//! | `link_browser` | `?access_token=`, `Accept: text/html`, `Sec-Fetch-Mode: navigate` | 302 to the path without the token, `Set-Cookie: daytona_authz=<token>; …; HttpOnly` |
//! | `cold_new` | a valid token for a sandbox daytona-authz has never seen | 200 from it, and exactly one Daytona API call |
//! | `cold_expired` | the same pool of sandboxes once more, after their cache entries expired | 200, one more API call each |
//! | `bad_signature` / `expired` / `garbage` / `no_token` | a token signed with another key / past `exp` / not a JWT or a broken one / none | 401 |
//! | `other_sandbox` | a valid token for another sandbox | 403 |
//! | `wrong_port` | a valid token for port 3000, the request for 3001 | 403 |
//! | `unknown_sandbox` | a valid token for a sandbox Daytona does not know (a fresh random id each time) | 404, one API call (ids never repeat, so the negative cache never answers) |
//! | `bad_host` | a host that is not `{port}-{uuid}.{domain}` | 400 |
//!
//! Every access token is minted for its request (random `jti`), so daytona-authz never sees a
//! token twice. The sandboxes live in the double started *without* `--any-sandbox` (so unknown
//! ids answer 404): the driver creates the warm ones and the cold pool through `/_double/sandboxes`
//! before it starts, and reads the double's per-sandbox call counters before and after the run
//! to check the API calls (cold: one per request; unknown: one each; warm: one per cache
//! lifetime at most; denials: none).
//!
//! The cold pool is cycled: its first pass is "never seen", later passes come back after the
//! entry expired (`--cache-ttl`), so every cold request is a cache miss while the number of
//! distinct preview hosts stays bounded (daytona-authz's cache and Envoy's DNS cache, at most
//! `max_hosts` = 8192 hosts in `envoy/envoy.yaml`, reach a steady size).
//!
//! Writes one JSON document (`--out`, else stdout) and a progress line per `--bucket` to stderr.
//! Exit status: 0 when every answer was the expected one and the API calls add up, 1 otherwise
//! (wrong decisions, any 5xx, transport errors or timeouts, requests not sent), 2 when the run
//! could not start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use daytona_authz::authz::token::{Claims, Signer, now};
use load_tools::{COOKIE_NAME, Latencies, sandbox_id};
use reqwest::header::{ACCEPT, AUTHORIZATION, COOKIE, HOST, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

/// Open-loop soak load through Envoy (see the module docs).
#[derive(Debug, Parser)]
struct Args {
    /// Envoy's listener, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    envoy: String,
    /// The Daytona double's API listener, e.g. `http://127.0.0.1:3000` (its `/_double/*`).
    #[arg(long)]
    double: String,
    /// The file holding daytona-authz's JWT secret (`--jwt-secret-file`).
    #[arg(long)]
    secret_file: PathBuf,
    /// daytona-authz's `--preview-domain`.
    #[arg(long, default_value = "preview.localhost")]
    domain: String,
    /// Requests per second, all categories together.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 300.0)]
    duration: f64,
    /// Warm sandboxes (each asked on two ports).
    #[arg(long, default_value_t = 4)]
    warm_sandboxes: usize,
    /// Distinct sandboxes of the cold category, cycled.
    #[arg(long, default_value_t = 768)]
    cold_pool: usize,
    /// daytona-authz's `--cache-ttl` in seconds: a cold sandbox comes back only after this.
    #[arg(long, default_value_t = 60.0)]
    cache_ttl: f64,
    /// Seconds per row of the timeline (and per progress line).
    #[arg(long, default_value_t = 60.0)]
    bucket: f64,
    /// Per-request timeout, seconds (a timeout counts as a transport error).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Requests in flight beyond which a due request is not sent (and counted as not sent).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: u64,
    /// Where the JSON results go (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The ports warm sandboxes are asked on; tokens name exactly the port asked for.
const WARM_PORTS: [u16; 2] = [3000, 5173];
const COLD_PORT: u16 = 3000;
/// A port no token of `wrong_port` grants.
const UNGRANTED_PORT: u16 = 3001;
/// Wrong decisions (and 5xx, transport errors) kept as examples in the output.
const MAX_EXAMPLES: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Bearer,
    Cookie,
    LinkProgram,
    LinkBrowser,
    ColdNew,
    ColdExpired,
    BadSignature,
    Expired,
    Garbage,
    NoToken,
    OtherSandbox,
    WrongPort,
    UnknownSandbox,
    BadHost,
}

/// The mix, in percent of all requests. `ColdNew` stands for the cold slot: it becomes
/// `ColdExpired` once the pool has been through once.
const MIX: &[(Kind, u32)] = &[
    (Kind::Bearer, 38),
    (Kind::Cookie, 15),
    (Kind::LinkProgram, 5),
    (Kind::LinkBrowser, 5),
    (Kind::ColdNew, 4),
    (Kind::BadSignature, 5),
    (Kind::Expired, 5),
    (Kind::Garbage, 4),
    (Kind::NoToken, 2),
    (Kind::OtherSandbox, 5),
    (Kind::WrongPort, 3),
    (Kind::UnknownSandbox, 5),
    (Kind::BadHost, 4),
];

/// Every category in report order, with its name, what is sent and what must come back.
const KINDS: &[(Kind, &str, &str, &str)] = &[
    (
        Kind::Bearer,
        "bearer",
        "valid Bearer token, warm sandbox",
        "200 from that sandbox",
    ),
    (
        Kind::Cookie,
        "cookie",
        "valid `daytona_authz` cookie",
        "200, cookie cut out",
    ),
    (
        Kind::LinkProgram,
        "link_program",
        "`?access_token=`, a program",
        "200, parameter removed",
    ),
    (
        Kind::LinkBrowser,
        "link_browser",
        "`?access_token=`, a browser",
        "302 + Set-Cookie",
    ),
    (
        Kind::ColdNew,
        "cold_new",
        "valid token, sandbox never seen",
        "200, 1 API call",
    ),
    (
        Kind::ColdExpired,
        "cold_expired",
        "valid token, cache entry expired",
        "200, 1 API call",
    ),
    (
        Kind::BadSignature,
        "bad_signature",
        "token signed with another key",
        "401",
    ),
    (Kind::Expired, "expired", "expired token", "401"),
    (Kind::Garbage, "garbage", "not a JWT / a broken JWT", "401"),
    (Kind::NoToken, "no_token", "no token at all", "401"),
    (
        Kind::OtherSandbox,
        "other_sandbox",
        "valid token for another sandbox",
        "403",
    ),
    (
        Kind::WrongPort,
        "wrong_port",
        "valid token, port not granted",
        "403",
    ),
    (
        Kind::UnknownSandbox,
        "unknown_sandbox",
        "valid token, sandbox unknown to Daytona",
        "404",
    ),
    (
        Kind::BadHost,
        "bad_host",
        "host not `{port}-{uuid}.{domain}`",
        "400",
    ),
];

fn kind_name(kind: Kind) -> &'static str {
    KINDS
        .iter()
        .find(|(k, ..)| *k == kind)
        .map_or("?", |(_, name, ..)| name)
}

/// Smooth weighted round robin (as nginx balances): the mix spread evenly over time, no RNG.
struct Mix {
    current: Vec<i64>,
}

impl Mix {
    fn new() -> Self {
        Mix {
            current: vec![0; MIX.len()],
        }
    }

    fn next(&mut self) -> Kind {
        let total: i64 = MIX.iter().map(|(_, w)| i64::from(*w)).sum();
        let mut best = 0;
        for (i, (_, weight)) in MIX.iter().enumerate() {
            self.current[i] += i64::from(*weight);
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        MIX[best].0
    }
}

fn share(kind: Kind) -> f64 {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let weight = MIX.iter().find(|(k, _)| *k == kind).map_or(0, |(_, w)| *w);
    f64::from(weight) / f64::from(total)
}

fn warm_id(i: usize) -> String {
    sandbox_id(0x50a1_0000, i)
}

fn cold_id(i: usize) -> String {
    sandbox_id(0x50a1_c01d, i)
}

/// What an answer must look like.
#[derive(Debug, Default)]
struct Expect {
    status: u16,
    /// For 200: the sandbox and port whose echo app must answer, and the path it must see.
    echo: Option<(String, u16, String)>,
    /// For 302: the `Location`, and the token the cookie must carry.
    redirect: Option<(String, String)>,
}

/// One request, ready to send.
struct Planned {
    seq: u64,
    kind: Kind,
    host: String,
    path: String,
    headers: Vec<(reqwest::header::HeaderName, String)>,
    expect: Expect,
}

/// Makes the requests: tokens are signed here, one per request.
struct Planner {
    domain: String,
    signer: Signer,
    stranger: Signer,
    warm: Vec<String>,
    cold_pool: usize,
    cold_sent: u64,
    /// Cold requests per pool index (for the API-call check).
    cold_requests: Vec<u64>,
    unknown_ids: Vec<String>,
    n: u64,
}

impl Planner {
    fn token(&self, signer: &Signer, sandbox: &str, port: u16, exp: u64) -> String {
        let claims = Claims {
            sandbox_id: sandbox.to_owned(),
            exp,
            ports: Some(vec![port]),
            iss: None,
            aud: None,
        };
        signer.sign_link(&claims, now()).expect("signable claims").0
    }

    fn valid(&self, sandbox: &str, port: u16) -> String {
        self.token(&self.signer, sandbox, port, now() + 3600)
    }

    fn host(&self, sandbox: &str, port: u16) -> String {
        format!("{port}-{sandbox}.{}", self.domain)
    }

    fn plan(&mut self, seq: u64, mut kind: Kind) -> Planned {
        self.n += 1;
        let n = self.n as usize;
        let sandbox = self.warm[n % self.warm.len()].clone();
        let port = WARM_PORTS[(n / self.warm.len()) % WARM_PORTS.len()];
        let path = format!("/soak/{seq}");
        let echo = |sandbox: &str, port: u16, path: &str| Expect {
            status: 200,
            echo: Some((sandbox.to_owned(), port, path.to_owned())),
            redirect: None,
        };
        let status = |status| Expect {
            status,
            ..Expect::default()
        };
        let bearer = |token: &str| vec![(AUTHORIZATION, format!("Bearer {token}"))];
        let (host, path, headers, expect) = match kind {
            Kind::Bearer => {
                let token = self.valid(&sandbox, port);
                let e = echo(&sandbox, port, &path);
                (self.host(&sandbox, port), path, bearer(&token), e)
            }
            Kind::Cookie => {
                let token = self.valid(&sandbox, port);
                let cookie = format!("theme=dark; {COOKIE_NAME}={token}");
                let e = echo(&sandbox, port, &path);
                (self.host(&sandbox, port), path, vec![(COOKIE, cookie)], e)
            }
            Kind::LinkProgram => {
                let token = self.valid(&sandbox, port);
                let e = echo(&sandbox, port, &format!("{path}?x=1"));
                let full = format!("{path}?access_token={token}&x=1");
                (self.host(&sandbox, port), full, vec![], e)
            }
            Kind::LinkBrowser => {
                let token = self.valid(&sandbox, port);
                let full = format!("{path}?access_token={token}&x=1");
                let e = Expect {
                    status: 302,
                    echo: None,
                    redirect: Some((format!("{path}?x=1"), token)),
                };
                let headers = vec![
                    (ACCEPT, "text/html,application/xhtml+xml".to_owned()),
                    (
                        reqwest::header::HeaderName::from_static("sec-fetch-mode"),
                        "navigate".to_owned(),
                    ),
                ];
                (self.host(&sandbox, port), full, headers, e)
            }
            Kind::ColdNew | Kind::ColdExpired => {
                let index = (self.cold_sent % self.cold_pool as u64) as usize;
                if self.cold_sent >= self.cold_pool as u64 {
                    kind = Kind::ColdExpired;
                }
                self.cold_sent += 1;
                self.cold_requests[index] += 1;
                let id = cold_id(index);
                let token = self.valid(&id, COLD_PORT);
                let e = echo(&id, COLD_PORT, &path);
                (self.host(&id, COLD_PORT), path, bearer(&token), e)
            }
            Kind::BadSignature => {
                let token = self.token(&self.stranger, &sandbox, port, now() + 3600);
                (self.host(&sandbox, port), path, bearer(&token), status(401))
            }
            Kind::Expired => {
                // Well past the 30 s clock skew daytona-authz allows.
                let token = self.token(&self.signer, &sandbox, port, now() - 600);
                (self.host(&sandbox, port), path, bearer(&token), status(401))
            }
            Kind::Garbage => {
                let token = if n.is_multiple_of(2) {
                    format!("not-a-jwt-{:032x}", rand::random::<u128>())
                } else {
                    let valid = self.valid(&sandbox, port);
                    // A real header and claims with the signature cut off and replaced.
                    let (head, _sig) = valid.rsplit_once('.').expect("a JWT");
                    format!("{head}.{:032x}", rand::random::<u128>())
                };
                (self.host(&sandbox, port), path, bearer(&token), status(401))
            }
            Kind::NoToken => (self.host(&sandbox, port), path, vec![], status(401)),
            Kind::OtherSandbox => {
                let other = &self.warm[(n + 1) % self.warm.len()];
                let token = self.valid(other, port);
                (self.host(&sandbox, port), path, bearer(&token), status(403))
            }
            Kind::WrongPort => {
                let token = self.valid(&sandbox, 3000);
                let host = self.host(&sandbox, UNGRANTED_PORT);
                (host, path, bearer(&token), status(403))
            }
            Kind::UnknownSandbox => {
                let id = uuid::Uuid::new_v4().to_string();
                let token = self.valid(&id, 3000);
                let host = self.host(&id, 3000);
                self.unknown_ids.push(id);
                (host, path, bearer(&token), status(404))
            }
            Kind::BadHost => {
                let token = self.valid(&sandbox, port);
                let host = match n % 3 {
                    0 => format!("www.{}", self.domain),
                    1 => format!("3000-not-a-sandbox.{}", self.domain),
                    _ => format!("80-{sandbox}.{}", self.domain),
                };
                (host, path, bearer(&token), status(400))
            }
        };
        Planned {
            seq,
            kind,
            host,
            path,
            headers,
            expect,
        }
    }
}

/// Checks an answer against what was expected; the error says what was wrong.
fn judge(plan: &Planned, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let expect = &plan.expect;
    if status != expect.status {
        let snippet: String = String::from_utf8_lossy(body).chars().take(160).collect();
        return Err(format!(
            "status {status}, expected {}: {snippet}",
            expect.status
        ));
    }
    if let Some((sandbox, port, path)) = &expect.echo {
        let echo: Value = serde_json::from_slice(body)
            .map_err(|e| format!("200 without the echo app's JSON ({e})"))?;
        if echo["sandbox_id"].as_str() != Some(sandbox)
            || echo["port"].as_u64() != Some(u64::from(*port))
        {
            return Err(format!(
                "answered by sandbox {} port {}, expected {sandbox} port {port}",
                echo["sandbox_id"], echo["port"]
            ));
        }
        if echo["path"].as_str() != Some(path) {
            return Err(format!(
                "the app saw path {}, expected {path:?}",
                echo["path"]
            ));
        }
        let seen = &echo["headers"];
        if seen.get("authorization").is_some() {
            return Err("the app received an Authorization header".into());
        }
        if seen.get("x-daytona-preview-token").is_some() {
            return Err("the app received the preview token".into());
        }
        let cookies: Vec<&str> = seen["cookie"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if cookies.iter().any(|c| c.contains(COOKIE_NAME)) {
            return Err("the app received our cookie".into());
        }
        if plan.kind == Kind::Cookie && cookies != ["theme=dark"] {
            return Err(format!(
                "the app's cookies became {cookies:?}, expected theme=dark"
            ));
        }
    }
    if let Some((location, token)) = &expect.redirect {
        let got = headers.get(LOCATION).and_then(|v| v.to_str().ok());
        if got != Some(location.as_str()) {
            return Err(format!("Location {got:?}, expected {location:?}"));
        }
        let prefix = format!("{COOKIE_NAME}={token};");
        let ok = headers.get_all(SET_COOKIE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.starts_with(&prefix) && v.contains("HttpOnly"))
        });
        if !ok {
            return Err("no HttpOnly Set-Cookie with the link's token".into());
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    sent: u64,
    statuses: BTreeMap<u16, u64>,
    wrong: u64,
    server_errors: u64,
    transport_errors: u64,
    /// Of the answered requests.
    latencies: Latencies,
}

impl Tally {
    fn summary(&self) -> Value {
        let ms = |p: f64| self.latencies.percentile_ms(p);
        json!({
            "sent": self.sent,
            "answered": self.latencies.len(),
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "wrong": self.wrong,
            "server_errors": self.server_errors,
            "transport_errors": self.transport_errors,
            "p50_ms": ms(50.0),
            "p99_ms": ms(99.0),
            "max_ms": self.latencies.max_ms(),
        })
    }
}

#[derive(Default)]
struct Stats {
    kinds: BTreeMap<Kind, Tally>,
    buckets: Vec<Tally>,
    examples: Vec<Value>,
}

impl Stats {
    fn bucket(&mut self, index: usize) -> &mut Tally {
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Tally::default);
        }
        &mut self.buckets[index]
    }
}

/// What became of one request.
enum Outcome {
    Right(u16),
    Wrong(u16, String),
    ServerError(u16, String),
    Transport(String),
}

async fn send(client: reqwest::Client, envoy: Arc<str>, plan: Planned) -> Outcome {
    let mut request = client
        .get(format!("{envoy}{}", plan.path))
        .header(HOST, &plan.host);
    for (name, value) in &plan.headers {
        request = request.header(name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Outcome::Transport(format!("{e:?}")),
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Outcome::Transport(format!("reading the body: {e:?}")),
    };
    if status >= 500 {
        let snippet: String = String::from_utf8_lossy(&body).chars().take(160).collect();
        let details = headers
            .get("x-envoy-response-code-details")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        return Outcome::ServerError(status, format!("{snippet} {details}").trim().to_owned());
    }
    match judge(&plan, status, &headers, &body) {
        Ok(()) => Outcome::Right(status),
        Err(why) => Outcome::Wrong(status, why),
    }
}

async fn api_stats(client: &reqwest::Client, double: &str) -> Result<Value, String> {
    let response = client
        .get(format!("{double}/_double/stats"))
        .send()
        .await
        .map_err(|e| format!("GET /_double/stats: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET /_double/stats: {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|e| format!("GET /_double/stats: {e}"))
}

fn calls(stats: &Value, id: &str, port: u16) -> u64 {
    stats["per_key"][format!("{id}:{port}")]
        .as_u64()
        .unwrap_or(0)
}

async fn create_sandboxes(
    client: &reqwest::Client,
    double: &str,
    ids: &[String],
) -> Result<(), String> {
    for chunk in ids.chunks(32) {
        let mut pending = Vec::new();
        for id in chunk {
            let request = client
                .post(format!("{double}/_double/sandboxes"))
                .header("content-type", "application/json")
                .body(json!({ "id": id }).to_string())
                .send();
            pending.push(async move { (id, request.await) });
        }
        for (id, result) in futures_util::future::join_all(pending).await {
            match result {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Err(format!("creating sandbox {id}: {}", r.status())),
                Err(e) => return Err(format!("creating sandbox {id}: {e}")),
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok(pass) => std::process::exit(if pass { 0 } else { 1 }),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let signer = load_tools::signer(&args.secret_file)?;
    let stranger = Signer::hs256(format!("{:064x}", rand::random::<u128>()).as_bytes());
    if args.rate <= 0.0 || args.duration <= 0.0 || args.warm_sandboxes < 2 || args.cold_pool == 0 {
        return Err(
            "--rate and --duration must be positive, --warm-sandboxes ≥ 2, --cold-pool ≥ 1".into(),
        );
    }
    let total = (args.rate * args.duration).round() as u64;
    let cold_rate = args.rate * share(Kind::ColdNew);
    let cold_total = total as f64 * share(Kind::ColdNew);
    let reuse_after = args.cold_pool as f64 / cold_rate;
    if cold_total > args.cold_pool as f64 && reuse_after < args.cache_ttl + 10.0 {
        return Err(format!(
            "a cold sandbox would come back after {reuse_after:.0} s, before its cache entry \
             ({:.0} s) surely expired: raise --cold-pool to at least {:.0} or lower --rate",
            args.cache_ttl,
            cold_rate * (args.cache_ttl + 10.0)
        ));
    }

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs_f64(args.timeout))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let double = args.double.trim_end_matches('/').to_owned();
    let warm: Vec<String> = (0..args.warm_sandboxes).map(warm_id).collect();
    let cold: Vec<String> = (0..args.cold_pool).map(cold_id).collect();
    create_sandboxes(&client, &double, &warm).await?;
    create_sandboxes(&client, &double, &cold).await?;
    let before = api_stats(&client, &double).await?;

    let mut planner = Planner {
        domain: args.domain.clone(),
        signer,
        stranger,
        warm: warm.clone(),
        cold_pool: args.cold_pool,
        cold_sent: 0,
        cold_requests: vec![0; args.cold_pool],
        unknown_ids: Vec::new(),
        n: 0,
    };
    let mut mix = Mix::new();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut in_flight_max = 0;
    let mut not_sent = 0u64;
    let mut max_lag = Duration::ZERO;
    let envoy: Arc<str> = args.envoy.trim_end_matches('/').into();
    let period = 1.0 / args.rate;
    let bucket_of = |due: Duration| (due.as_secs_f64() / args.bucket) as usize;
    let mut tasks = tokio::task::JoinSet::new();

    eprintln!(
        "soak: {total} requests at {} req/s over {} s; {} warm sandboxes, cold pool {} \
         (a cold sandbox comes back after {reuse_after:.0} s)",
        args.rate, args.duration, args.warm_sandboxes, args.cold_pool
    );
    let start = Instant::now() + Duration::from_millis(100);
    let mut next_report = 1;
    for seq in 0..total {
        let offset = Duration::from_secs_f64(seq as f64 * period);
        let due = start + offset;
        tokio::time::sleep_until(due.into()).await;
        max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        let plan = planner.plan(seq, mix.next());
        let kind = plan.kind;
        let bucket = bucket_of(offset);
        {
            let mut s = stats.lock().unwrap();
            s.kinds.entry(kind).or_default().sent += 1;
            s.bucket(bucket).sent += 1;
        }
        let now_in_flight = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        in_flight_max = in_flight_max.max(now_in_flight);
        if now_in_flight > args.max_in_flight {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            not_sent += 1;
            continue;
        }
        let (client, envoy, task_stats, in_flight) = (
            client.clone(),
            envoy.clone(),
            stats.clone(),
            in_flight.clone(),
        );
        tasks.spawn(async move {
            let stats = task_stats;
            let seq = plan.seq;
            let host = plan.host.clone();
            let outcome = send(client, envoy, plan).await;
            let latency = due.elapsed();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let mut s = stats.lock().unwrap();
            let mut example = None;
            let (status, wrong, server_error, transport) = match outcome {
                Outcome::Right(status) => (Some(status), false, false, false),
                Outcome::Wrong(status, why) => {
                    example = Some(("wrong", Some(status), why));
                    (Some(status), true, false, false)
                }
                Outcome::ServerError(status, why) => {
                    example = Some(("5xx", Some(status), why));
                    (Some(status), false, true, false)
                }
                Outcome::Transport(why) => {
                    example = Some(("transport", None, why));
                    (None, false, false, true)
                }
            };
            let record = |tally: &mut Tally| {
                if let Some(status) = status {
                    *tally.statuses.entry(status).or_default() += 1;
                    tally.latencies.record(latency);
                }
                tally.wrong += u64::from(wrong);
                tally.server_errors += u64::from(server_error);
                tally.transport_errors += u64::from(transport);
            };
            record(s.kinds.entry(kind).or_default());
            record(s.bucket(bucket));
            if let Some((what, status, why)) = example
                && s.examples.len() < MAX_EXAMPLES
            {
                s.examples.push(json!({
                    "what": what, "category": kind_name(kind), "seq": seq,
                    "at_s": (seq as f64 * period), "status": status, "host": host, "why": why,
                }));
            }
        });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| format!("a request task failed: {e}"))?;
        }
        if offset.as_secs_f64() >= next_report as f64 * args.bucket {
            report_progress(&stats, next_report - 1, args.bucket);
            next_report += 1;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("a request task failed: {e}"))?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if (next_report - 1) as f64 * args.bucket < args.duration {
        report_progress(&stats, next_report - 1, args.bucket);
    }

    // The API calls, from the double's counters.
    let after = api_stats(&client, &double).await?;
    let delta = |id: &str, port: u16| calls(&after, id, port) - calls(&before, id, port);
    let max_per_warm_key = (args.duration / args.cache_ttl).ceil() as u64 + 1;
    let mut warm_calls = BTreeMap::new();
    let mut warm_over = 0;
    for id in &warm {
        for port in WARM_PORTS {
            let n = delta(id, port);
            warm_over += u64::from(n > max_per_warm_key);
            warm_calls.insert(format!("{id}:{port}"), n);
        }
    }
    let mut cold_calls = 0;
    let mut cold_mismatches = Vec::new();
    for (index, &requests) in planner.cold_requests.iter().enumerate() {
        let n = delta(&cold_id(index), COLD_PORT);
        cold_calls += n;
        if n != requests && cold_mismatches.len() < MAX_EXAMPLES {
            cold_mismatches
                .push(json!({"sandbox": cold_id(index), "requests": requests, "api_calls": n}));
        }
    }
    let cold_mismatch_count = planner
        .cold_requests
        .iter()
        .enumerate()
        .filter(|(i, r)| delta(&cold_id(*i), COLD_PORT) != **r)
        .count();
    let unknown_calls: u64 = planner.unknown_ids.iter().map(|id| delta(id, 3000)).sum();
    let unknown_mismatches = planner
        .unknown_ids
        .iter()
        .filter(|id| delta(id, 3000) != 1)
        .count();
    let total_calls = after["preview_url_calls"].as_u64().unwrap_or(0)
        - before["preview_url_calls"].as_u64().unwrap_or(0);
    let accounted = warm_calls.values().sum::<u64>() + cold_calls + unknown_calls;
    let unexpected = total_calls.saturating_sub(accounted);
    let api_ok =
        warm_over == 0 && cold_mismatch_count == 0 && unknown_mismatches == 0 && unexpected == 0;

    let s = stats.lock().unwrap();
    let mut categories = Vec::new();
    let (mut wrong, mut server_errors, mut transport, mut sent) = (0, 0, 0, 0);
    for (kind, name, sends, expects) in KINDS {
        let Some(tally) = s.kinds.get(kind) else {
            continue;
        };
        wrong += tally.wrong;
        server_errors += tally.server_errors;
        transport += tally.transport_errors;
        sent += tally.sent;
        let mut summary = tally.summary();
        summary["key"] = json!(name);
        summary["request"] = json!(sends);
        summary["expect"] = json!(expects);
        categories.push(summary);
    }
    let mut all = Tally::default();
    for tally in s.kinds.values() {
        all.latencies.merge(&tally.latencies);
    }
    let all = all.summary();
    let buckets: Vec<Value> = s
        .buckets
        .iter()
        .enumerate()
        .map(|(i, tally)| {
            let mut summary = tally.summary();
            summary["from_s"] = json!(i as f64 * args.bucket);
            summary["to_s"] = json!(((i + 1) as f64 * args.bucket).min(args.duration));
            summary
        })
        .collect();
    let pass = wrong == 0 && server_errors == 0 && transport == 0 && not_sent == 0 && api_ok;
    let result = json!({
        "pass": pass,
        "config": {
            "rate": args.rate, "duration_s": args.duration, "warm_sandboxes": args.warm_sandboxes,
            "warm_ports": WARM_PORTS, "cold_pool": args.cold_pool, "cache_ttl_s": args.cache_ttl,
            "cold_reuse_after_s": reuse_after, "timeout_s": args.timeout,
            "mix_percent": MIX.iter().map(|(k, w)| (kind_name(*k).to_owned(), json!(w))).collect::<serde_json::Map<_, _>>(),
        },
        "requests": total,
        "sent": sent,
        "not_sent": not_sent,
        "elapsed_s": elapsed,
        "achieved_rate": total as f64 / elapsed,
        "max_lag_ms": max_lag.as_secs_f64() * 1000.0,
        "in_flight_max": in_flight_max,
        "wrong": wrong,
        "server_errors": server_errors,
        "transport_errors": transport,
        "all": all,
        "categories": categories,
        "buckets": buckets,
        "examples": s.examples,
        "api": {
            "ok": api_ok,
            "total_calls": total_calls,
            "warm_calls": warm_calls,
            "warm_max_allowed_per_key": max_per_warm_key,
            "warm_keys_over": warm_over,
            "cold_requests": planner.cold_sent,
            "cold_distinct": planner.cold_requests.iter().filter(|r| **r > 0).count(),
            "cold_calls": cold_calls,
            "cold_mismatches": cold_mismatch_count,
            "cold_mismatch_examples": cold_mismatches,
            "unknown_requests": planner.unknown_ids.len(),
            "unknown_calls": unknown_calls,
            "unknown_mismatches": unknown_mismatches,
            "unexpected_calls": unexpected,
        },
    });
    let text = serde_json::to_string_pretty(&result).expect("serialisable");
    match &args.out {
        Some(path) => {
            std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => println!("{text}"),
    }
    eprintln!(
        "soak: {} — {sent} sent, {wrong} wrong, {server_errors} 5xx, {transport} transport errors, \
         {not_sent} not sent; API calls {total_calls} (cold {cold_calls} for {} cold requests, \
         unknown {unknown_calls} for {}, unexpected {unexpected})",
        if pass { "PASS" } else { "FAIL" },
        planner.cold_sent,
        planner.unknown_ids.len()
    );
    Ok(pass)
}

fn report_progress(stats: &Mutex<Stats>, index: usize, bucket: f64) {
    let s = stats.lock().unwrap();
    let Some(tally) = s.buckets.get(index) else {
        return;
    };
    let summary = tally.summary();
    eprintln!(
        "soak: {:>5.0}–{:<5.0} s: {} sent, {} answered, {} wrong, {} 5xx, {} transport errors, p50 {} ms, p99 {} ms",
        index as f64 * bucket,
        (index + 1) as f64 * bucket,
        summary["sent"],
        summary["answered"],
        summary["wrong"],
        summary["server_errors"],
        summary["transport_errors"],
        summary["p50_ms"],
        summary["p99_ms"]
    );
}
