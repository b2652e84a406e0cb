//! Test support for daytona-authz's end-to-end tests (`tests/e2e`): the Daytona double served
//! in-process (the `daytona-double` library), daytona-authz and Envoy (from `.venv`) as real
//! processes on 127.0.0.1, readiness by polling, and cleanup on drop. Every end-to-end test
//! builds a [`Stack`] and talks to Envoy's listener over real HTTP, as curl would.
//!
//! The product's library is imported here only (re-exported below), so a change of its module
//! paths is a change of this crate alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// What the tests use of the product's library: the token format (to sign tokens and read the
/// clock as daytona-authz does) and the admin API's gRPC client and messages.
pub use daytona_authz::authz::token::{Claims, Signer, now};
pub use daytona_authz::proto::admin as pb;
pub use daytona_double::{Sandbox, TlsFiles};

mod otlp;
mod raw;
mod redis;
mod servers;

pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use raw::{RawReply, raw, raw_get};
pub use redis::RedisServer;
pub use servers::{FakeDaytonaApi, LocalServer};

pub const API_KEY: &str = "test-organization-api-key";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef-0123456789";
pub const PREVIEW_DOMAIN: &str = "preview.test";
/// The sandbox daytona-authz's readiness probe asks about.
pub const PROBE_SANDBOX: &str = "00000000-0000-0000-0000-000000000000";
/// How long any single start-up step may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository (the workspace root, one level above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support/ sits in the repository")
        .to_owned()
}

/// The daytona-authz binary that `cargo test` built beside the running test binary
/// (`target/<profile>/deps/<test>` -> `target/<profile>/daytona-authz`): what
/// `env!("CARGO_BIN_EXE_daytona-authz")` names in an integration test, found at run time since
/// this crate is not one.
pub fn authz_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join(format!("daytona-authz{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "no daytona-authz at {} (cargo test builds it for the package's tests)",
        bin.display()
    );
    bin
}

/// A program some tests need and `scripts/test` installs from Debian (`redis-server`, `chromium`,
/// `prometheus` and `promtool`): the path in the environment variable `var`, else `binary` on
/// PATH. `None` means "skip this test", and says so on stderr; under CI a missing program fails
/// the test instead, so a CI run cannot pass by skipping.
pub fn optional_program(var: &str, binary: &str, test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return Some(path);
    }
    let found = std::env::var_os("PATH").and_then(|dirs| {
        std::env::split_paths(&dirs)
            .map(|dir| dir.join(binary))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        skip(
            test,
            &format!("{binary} not found"),
            &format!(
                "scripts/test installs it (scripts/install-debian PACKAGE {binary}), or set {var}"
            ),
        );
    }
    found
}

/// Says on stderr that `test` skips because of `missing` (with a `hint` to fix it); under CI it
/// fails the test instead, so a CI run cannot pass by skipping.
pub fn skip(test: &str, missing: &str, hint: &str) {
    assert!(std::env::var_os("CI").is_none(), "{missing}: {hint}");
    // Straight to stderr: the test harness captures `eprintln!` of passing tests.
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("{test}: skipped, {missing} ({hint})\n"),
    );
}

/// Envoy from `ENVOY_BIN`, else the project's venv (`scripts/install-envoy` creates it).
pub fn envoy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return path.into();
    }
    let path = repo_root().join(".venv/bin/envoy");
    assert!(
        path.exists(),
        "no Envoy at {}: run scripts/install-envoy (scripts/test does)",
        path.display()
    );
    path
}

/// Polls `probe` (every 25 ms) until it yields a value, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(timeout, probe)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `probe` (every 25 ms) until it yields a value; `None` once `timeout` has passed (the
/// caller says what went wrong, e.g. with what it last saw).
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends `send` until the reply has status `want`, at most for `limit`. Returns the reply and
/// how long it took from the first attempt.
pub async fn until_status<F, Fut>(
    what: &str,
    want: u16,
    limit: Duration,
    mut send: F,
) -> (Reply, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let started = Instant::now();
    let last = Mutex::new(None);
    let reply = poll(limit, || {
        let reply = send();
        let last = &last;
        async move {
            let reply = reply.await;
            if reply.status == want {
                return Some(reply);
            }
            *last.lock().unwrap() = Some(reply);
            None
        }
    })
    .await;
    match reply {
        Some(reply) => (reply, started.elapsed()),
        None => {
            let reply = last.lock().unwrap().take().expect("one reply at least");
            panic!(
                "{what}: still {} instead of {want} after {limit:?}: {}",
                reply.status, reply.body
            );
        }
    }
}

// -------------------------------------------------------------------------------------------------
// No secret in any log, across the whole suite
// -------------------------------------------------------------------------------------------------

/// Every secret this test binary handed to the system under test: the API key, JWT and admin
/// secrets, every token `sign` minted, every secret-named environment value given to
/// daytona-authz, every preview token a double issued (the doubles tell [`remember_secret`]). When a daytona-authz or Envoy process of
/// any test ends, its whole output (daytona-authz's logs, Envoy's access log and own log) is
/// checked against all of them and against anything shaped like a JWT; a hit fails that test.
static SECRETS: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| {
    Mutex::new(
        [API_KEY, JWT_SECRET, ADMIN_TOKEN]
            .into_iter()
            .map(str::to_owned)
            .collect(),
    )
});

/// Words a test deliberately put where logs record them (a token in a URL path, which is never a
/// credential here and is logged like any path): exempt from the check.
static EXEMPT: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// Exempts `word` from the secret check, for a test that sends a token where it is not a
/// credential and logs may record it (Envoy's access log records paths as sent).
pub fn allow_in_logs(word: &str) {
    EXEMPT.lock().unwrap().insert(word.to_owned());
}

/// Adds a secret the logs must never contain (short strings are ignored: they would match words).
pub fn remember_secret(secret: &str) {
    if secret.len() >= 12 {
        SECRETS.lock().unwrap().insert(secret.to_owned());
    }
}

/// The first secret (or JWT-shaped word) in `output`, masked, with its line number.
fn find_secret(output: &str) -> Option<String> {
    let secrets = SECRETS.lock().unwrap();
    let exempt = EXEMPT.lock().unwrap();
    for (number, line) in output.lines().enumerate() {
        // Secrets are made of these characters, so each one is a whole word of a line that
        // quotes it, whatever the quoting (`k=v`, JSON, a header dump, a URL).
        let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)));
        for word in words {
            let jwt_shaped = word.starts_with("eyJ") && word.matches('.').count() >= 2;
            if (jwt_shaped || secrets.contains(word)) && !exempt.contains(word) {
                let shown: String = word.chars().take(6).collect();
                return Some(format!("line {}: {shown}... ", number + 1));
            }
        }
    }
    None
}

/// Fails the test if a daytona-authz or Envoy process printed a secret.
pub fn assert_no_secret(name: &str, output: &str) {
    if let Some(hit) = find_secret(output)
        && !std::thread::panicking()
    {
        panic!("{name} printed a secret ({hit}):\n{output}");
    }
}

/// A child process, killed when dropped; its stdout and stderr are collected.
pub struct Proc {
    name: &'static str,
    child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    /// How many of the two pipes have been read to their end.
    drained: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proc {
    pub fn spawn(name: &'static str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let drained = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stdout = collect(child.stdout.take().expect("piped"), Arc::clone(&drained));
        let stderr = collect(child.stderr.take().expect("piped"), Arc::clone(&drained));
        Proc {
            name,
            child,
            stdout,
            stderr,
            drained,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (it was told to, or is expected to).
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let name = self.name;
        let status = eventually(&format!("{name} to exit"), timeout, || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await;
        // Everything it wrote, read: the pipes' readers may still be behind on a busy machine.
        // (Bounded: a child of its own could hold a pipe open.)
        let drained = Arc::clone(&self.drained);
        poll(Duration::from_secs(5), || {
            let done = drained.load(std::sync::atomic::Ordering::Acquire) == 2;
            async move { done.then_some(()) }
        })
        .await;
        status
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the process has logged (on stderr) a line containing every one of `words`;
    /// returns it.
    pub async fn logged(&self, what: &str, words: &[&str]) -> String {
        eventually(what, Duration::from_secs(10), || {
            let line = self
                .stderr()
                .lines()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .map(str::to_owned);
            async move { line }
        })
        .await
    }

    /// Whether the process has ended.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Fails the test with the process's output if it died.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}):\n{}\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if matches!(self.name, "daytona-authz" | "envoy") {
            assert_no_secret(self.name, &format!("{}{}", self.stdout(), self.stderr()));
        }
    }
}

fn collect(
    stream: impl Read + Send + 'static,
    drained: Arc<std::sync::atomic::AtomicUsize>,
) -> Arc<Mutex<String>> {
    let buffer = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&buffer);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
        drained.fetch_add(1, std::sync::atomic::Ordering::Release);
    });
    buffer
}

/// Waits until `proc` printed a line containing `marker`; returns that line.
async fn wait_line(proc: &mut Proc, stream: fn(&Proc) -> String, marker: &str) -> String {
    let line = poll(READY_TIMEOUT, || {
        let line = stream(proc)
            .lines()
            .find(|l| l.contains(marker))
            .map(str::to_owned);
        if line.is_none() {
            proc.assert_running();
        }
        async move { line }
    })
    .await;
    line.unwrap_or_else(|| panic!("{} never printed {marker:?}:\n{}", proc.name, proc.stderr()))
}

/// The value of `key` in a tracing log line (`key=value`, or a JSON object's field).
fn field(line: &str, key: &str) -> String {
    if line.starts_with('{') {
        let object: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        return object[key].as_str().expect("field present").to_owned();
    }
    let start = line.find(&format!("{key}=")).expect("field present") + key.len() + 1;
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// The Daytona test double (API + preview proxy), served in-process by the `daytona-double`
/// library on a runtime of its own: it answers whatever the test's own runtime is doing (a
/// blocking call, a test runtime on one thread), and dropping it closes its listeners.
pub struct Double {
    pub api_url: String,
    pub proxy_port: u16,
    pub sandbox: Sandbox,
    http: reqwest::Client,
    // Drop order: the server is told to stop, then its runtime goes, connections and all.
    _server: daytona_double::Server,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Double {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Without waiting: a test's runtime may not block.
            runtime.shutdown_background();
        }
    }
}

impl Double {
    pub async fn start() -> Double {
        Double::start_with(None).await
    }

    /// With `tls`, the preview proxy serves HTTPS and preview URLs are `https://`.
    pub async fn start_with(tls: Option<&TlsFiles>) -> Double {
        Double::launch("127.0.0.1:0", tls).await
    }

    /// With its API on a given address (e.g. one daytona-authz was already told about).
    pub async fn start_at(api_addr: &str) -> Double {
        Double::launch(api_addr, None).await
    }

    async fn launch(api_addr: &str, tls: Option<&TlsFiles>) -> Double {
        Double::launch_with(api_addr, tls, None).await
    }

    /// With `api_tls`, the API serves HTTPS (`https://127.0.0.1:…/api`) and the test's own
    /// calls to the double trust the CA in the PEM file given with it.
    async fn launch_with(
        api_addr: &str,
        tls: Option<&TlsFiles>,
        api_tls: Option<(&TlsFiles, &Path)>,
    ) -> Double {
        let mut options = daytona_double::Options::new(API_KEY);
        options.api_addr = api_addr.parse().expect("a socket address");
        options.proxy_tls = tls.cloned();
        // Every preview token issued is a secret no log may contain.
        options.on_token_issued = Some(Arc::new(remember_secret));
        let mut http = reqwest::Client::builder();
        if let Some((api_tls, ca)) = api_tls {
            options.api_tls = Some(api_tls.clone());
            let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
            http = http.add_root_certificate(ca);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("daytona-double")
            .enable_all()
            .build()
            .expect("a runtime for the double");
        let server = runtime
            .spawn(daytona_double::start(options))
            .await
            .expect("the double's start-up")
            .unwrap_or_else(|e| panic!("cannot start the double: {e}"));
        let ready = server.ready.clone();
        Double {
            api_url: ready.api_url,
            proxy_port: ready.proxy_port,
            sandbox: ready.sandboxes[0].clone(),
            http: http.build().unwrap(),
            _server: server,
            runtime: Some(runtime),
        }
    }

    /// `--upstream-domain` allowing exactly this double's preview proxy.
    pub fn upstream_domain_args(&self) -> [String; 2] {
        [
            "--upstream-domain".to_owned(),
            format!("proxy.localhost:{}", self.proxy_port),
        ]
    }

    fn control(&self, path: &str) -> String {
        format!("{}/_double/{path}", self.api_url.trim_end_matches("/api"))
    }

    /// Calls to the preview-url API for real sandboxes: daytona-authz's readiness probe (which
    /// asks about the nil UUID, a sandbox that cannot exist) is not counted.
    pub async fn api_calls(&self) -> u64 {
        let stats = self.stats().await;
        let probes = stats["per_key"][format!("{PROBE_SANDBOX}:3000")]
            .as_u64()
            .unwrap_or(0);
        stats["preview_url_calls"].as_u64().unwrap() - probes
    }

    /// The double's counters (`GET /_double/stats`).
    async fn stats(&self) -> serde_json::Value {
        self.http
            .get(self.control("stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Regenerates a sandbox's preview token, as Daytona does on every sandbox start.
    pub async fn restart(&self, sandbox_id: &str) -> Sandbox {
        self.post(
            &format!("sandboxes/{sandbox_id}/restart"),
            serde_json::json!({}),
        )
        .await
    }

    pub async fn create_sandbox(&self) -> Sandbox {
        self.post("sandboxes", serde_json::json!({})).await
    }

    /// A sandbox with this id (a lower-case UUID).
    pub async fn create_sandbox_with_id(&self, id: &str) -> Sandbox {
        self.post("sandboxes", serde_json::json!({ "id": id }))
            .await
    }

    /// A sandbox with this id (a lower-case UUID) and these labels.
    pub async fn create_sandbox_with_id_and_labels(
        &self,
        id: &str,
        labels: &[(&str, &str)],
    ) -> Sandbox {
        self.post(
            "sandboxes",
            serde_json::json!({ "id": id, "labels": labels_object(labels) }),
        )
        .await
    }

    /// A new sandbox with these labels (what `GET /sandbox/{id}` reports, and policies read).
    pub async fn create_sandbox_with_labels(&self, labels: &[(&str, &str)]) -> Sandbox {
        self.post(
            "sandboxes",
            serde_json::json!({ "labels": labels_object(labels) }),
        )
        .await
    }

    /// Calls of `GET /sandbox/{id}` (sandbox descriptions) so far.
    pub async fn sandbox_calls(&self) -> u64 {
        let stats = self.stats().await;
        stats["sandbox_calls"].as_u64().unwrap()
    }

    /// Calls of the preview-url API for one sandbox (any port).
    pub async fn preview_url_calls_for(&self, sandbox_id: &str) -> u64 {
        let stats = self.stats().await;
        stats["per_key"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{sandbox_id}:")))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum()
    }

    /// Makes the preview-url API answer only after `delay` (replaces any other fault).
    pub async fn delay(&self, delay: Duration) {
        let _: serde_json::Value = self
            .post(
                "fault",
                serde_json::json!({ "delay_ms": delay.as_millis() as u64 }),
            )
            .await;
    }

    /// Makes the preview-url API answer `status` (None: normal again).
    pub async fn fault(&self, status: Option<u16>) {
        let _: serde_json::Value = self
            .post("fault", serde_json::json!({ "status": status }))
            .await;
    }

    /// Makes the preview-url API answer 429 with `Retry-After: {seconds}`.
    pub async fn rate_limit(&self, seconds: u64) {
        let _: serde_json::Value = self
            .post(
                "fault",
                serde_json::json!({ "status": 429, "retry_after": seconds }),
            )
            .await;
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> T {
        let response = self
            .http
            .post(self.control(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Every request Daytona's proxy received, headers as received.
    pub async fn proxy_requests(&self) -> Vec<ProxyRequest> {
        self.http
            .get(self.control("proxy-requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProxyRequest {
    pub host: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The TLS server name (SNI) the proxy saw; `None` over plain HTTP.
    pub sni: Option<String>,
}

impl ProxyRequest {
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// How to start daytona-authz.
#[derive(Debug, Clone, Default)]
pub struct AuthzOptions {
    /// Overrides the double's API URL (e.g. a closed port).
    pub api_url: Option<String>,
    pub extra_args: Vec<String>,
    /// Extra environment (an empty value removes the variable). Naming
    /// `DAYTONA_AUTHZ_ADMIN_TOKEN` here replaces the default admin token and means "don't wait
    /// for the admin API".
    pub env: Vec<(String, String)>,
}

impl AuthzOptions {
    /// Only these extra command-line arguments.
    pub fn args(args: &[&str]) -> Self {
        AuthzOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// How to start a whole [`Stack`]; an [`AuthzOptions`] alone converts into one.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    pub authz: AuthzOptions,
    /// The double's preview proxy serves HTTPS with this certificate (its preview URLs become
    /// `https://`, so Envoy takes the `daytona_preview_https` cluster).
    pub double_tls: Option<TlsFiles>,
    /// The CA bundle Envoy trusts for HTTPS upstreams, in place of the system bundle.
    pub envoy_trusted_ca: Option<PathBuf>,
    /// The `max_hosts` of Envoy's DNS cache, in place of envoy.yaml's.
    pub envoy_max_hosts: Option<u32>,
    /// The double's API serves HTTPS with this certificate, issued by the CA in this PEM file.
    pub double_api_tls: Option<(TlsFiles, PathBuf)>,
    /// Which shipped Envoy config runs: how clients reach the edge.
    pub edge: Edge,
    /// More command-line arguments for Envoy (e.g. the manifest's `--drain-time-s`).
    pub envoy_args: Vec<String>,
    /// Changes to the Envoy config's text before it runs, each `(from, to)` a literal
    /// replacement of the first `from` (which must be there), in order, before the harness's own
    /// port rewrites (e.g. [`envoy_tracing_edits`]).
    pub envoy_edits: Vec<(String, String)>,
}

impl From<AuthzOptions> for StackOptions {
    fn from(authz: AuthzOptions) -> Self {
        StackOptions {
            authz,
            ..Default::default()
        }
    }
}

pub struct Authz {
    pub proc: Proc,
    pub grpc_addr: String,
    pub http_addr: String,
    pub admin_addr: Option<String>,
    /// Holds the revocation store, unless the test named its own `--revocation-db`.
    _state: tempfile::TempDir,
}

impl Authz {
    /// Starts daytona-authz and waits until it is ready (`/readyz`).
    pub async fn start(api_url: &str, options: &AuthzOptions) -> Authz {
        let mut authz = Authz::spawn(api_url, options).await;
        authz.wait_ready().await;
        authz
    }

    /// Starts daytona-authz and waits only until it listens.
    pub async fn spawn(api_url: &str, options: &AuthzOptions) -> Authz {
        let state = tempfile::tempdir().unwrap();
        let mut command = Command::new(authz_bin());
        command.arg("serve");
        // An ephemeral port unless the test fixed one (e.g. to restart on the same port).
        if !options.extra_args.iter().any(|a| a == "--grpc-addr") {
            command.args(["--grpc-addr", "127.0.0.1:0"]);
        }
        command
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .env(
                "DAYTONA_AUTHZ_REVOCATION_DB",
                state.path().join("revocations.redb"),
            )
            .args(["--daytona-api-url", api_url]);
        // The tests' preview domain, unless the test named its own (or a config file does).
        if !options
            .extra_args
            .iter()
            .any(|a| a == "--preview-domain" || a == "--config")
        {
            command.args(["--preview-domain", PREVIEW_DOMAIN]);
        }
        command
            .args(&options.extra_args)
            .env("DAYTONA_API_KEY", API_KEY)
            .env("DAYTONA_AUTHZ_JWT_SECRET", JWT_SECRET)
            .env("DAYTONA_AUTHZ_ADMIN_TOKEN", ADMIN_TOKEN)
            // Debug: the secret check at the end sees everything daytona-authz could ever log.
            .env("RUST_LOG", "info,daytona_authz=debug");
        for (name, value) in &options.env {
            let secret_named = ["SECRET", "TOKEN", "KEY", "PASSWORD"]
                .iter()
                .any(|word| name.contains(word));
            if secret_named && !name.ends_with("_FILE") {
                remember_secret(value);
            }
            if value.is_empty() {
                command.env_remove(name);
            } else {
                command.env(name, value);
            }
        }
        let mut proc = Proc::spawn("daytona-authz", &mut command);
        let line = wait_line(&mut proc, Proc::stderr, "daytona-authz listening").await;
        let grpc_addr = field(&line, "grpc_addr");
        let http_addr = field(&line, "http_addr");
        let admin_addr = if options
            .env
            .iter()
            .any(|(k, _)| k == "DAYTONA_AUTHZ_ADMIN_TOKEN")
        {
            None
        } else {
            let line = wait_line(&mut proc, Proc::stderr, "admin API listening").await;
            Some(field(&line, "admin_addr"))
        };
        Authz {
            proc,
            grpc_addr,
            http_addr,
            admin_addr,
            _state: state,
        }
    }

    /// `GET /readyz` is 200.
    pub async fn is_ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.http_addr);
        matches!(reqwest::get(url).await, Ok(r) if r.status() == 200)
    }

    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.http_addr);
        let proc = &mut self.proc;
        let ready = poll(READY_TIMEOUT, || {
            proc.assert_running();
            let answer = reqwest::get(url.clone());
            async move { matches!(answer.await, Ok(r) if r.status() == 200).then_some(()) }
        })
        .await;
        if ready.is_none() {
            panic!("daytona-authz never became ready:\n{}", self.proc.stderr());
        }
    }

    /// The Prometheus text at `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends a Unix signal (TERM, HUP, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }
}

/// Envoy running `envoy/envoy.yaml`, moved to loopback ports.
pub struct Envoy {
    pub proc: Proc,
    /// The public listener's port.
    pub port: u16,
    /// The metrics listener's port (`/stats/prometheus`, `/metrics`).
    pub metrics_port: u16,
    /// The edge health listener's port (`GET /healthz`).
    pub health_port: u16,
    pub admin: String,
    _dir: tempfile::TempDir,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

impl Envoy {
    pub async fn start(authz: &Authz) -> Envoy {
        Envoy::start_with(authz, None).await
    }

    /// With `trusted_ca`, HTTPS upstreams are verified against that PEM bundle instead of the
    /// system one.
    pub async fn start_with(authz: &Authz, trusted_ca: Option<&Path>) -> Envoy {
        Envoy::start_configured(authz, trusted_ca, None).await
    }

    /// Also with `max_hosts`, the DNS cache's bound in place of envoy.yaml's.
    pub async fn start_configured(
        authz: &Authz,
        trusted_ca: Option<&Path>,
        max_hosts: Option<u32>,
    ) -> Envoy {
        Envoy::start_edge(authz, trusted_ca, max_hosts, &Edge::Plain).await
    }

    /// Runs the shipped config for `edge` (envoy.yaml, envoy-behind-proxy.yaml or
    /// envoy-tls.yaml, as they are in the repository).
    pub async fn start_edge(
        authz: &Authz,
        trusted_ca: Option<&Path>,
        max_hosts: Option<u32>,
        edge: &Edge,
    ) -> Envoy {
        Envoy::launch(authz, trusted_ca, max_hosts, edge, &[], &[]).await
    }

    /// [`Envoy::start_edge`], with more command-line arguments for Envoy and `edits` to its
    /// config (see [`StackOptions::envoy_edits`]).
    pub async fn launch(
        authz: &Authz,
        trusted_ca: Option<&Path>,
        max_hosts: Option<u32>,
        edge: &Edge,
        extra_args: &[String],
        edits: &[(String, String)],
    ) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let mut config = std::fs::read_to_string(repo_root().join(edge.config_file())).unwrap();
        for (from, to) in edits {
            assert!(
                config.contains(from.as_str()),
                "{} does not contain the text to edit:\n{from}",
                edge.config_file()
            );
            config = config.replacen(from.as_str(), to, 1);
        }
        let config = match edge {
            Edge::Plain | Edge::BehindProxy => replace_n(
                &config,
                1,
                "address: 0.0.0.0, port_value: 8080",
                "address: 127.0.0.1, port_value: 0",
            ),
            Edge::Tls(certificate_dir)
            | Edge::Sso {
                certificate: certificate_dir,
                ..
            } => {
                // The SDS file as shipped, pointed at the test's certificate directory, in a
                // directory of its own as envoy-tls.yaml expects.
                let sds_dir = dir.path().join("sds");
                std::fs::create_dir(&sds_dir).unwrap();
                let sds = std::fs::read_to_string(repo_root().join(EDGE_CERTIFICATE_SDS)).unwrap();
                let sds = replace_n(
                    &sds,
                    4,
                    "/etc/envoy/tls",
                    &certificate_dir.display().to_string(),
                );
                std::fs::write(sds_dir.join("edge-certificate.yaml"), sds).unwrap();
                // envoy-sso.yaml's two OAuth2 secrets, likewise pointed at the test's files.
                let mut sds_paths = 3;
                if let Edge::Sso { oauth, .. } = edge {
                    for file in OAUTH_SECRETS_SDS {
                        let sds = std::fs::read_to_string(repo_root().join(file)).unwrap();
                        assert!(sds.contains("filename: /etc/envoy/oauth/"), "{file}");
                        let sds = sds.replace("/etc/envoy/oauth", &oauth.display().to_string());
                        let name = Path::new(file).file_name().unwrap();
                        std::fs::write(sds_dir.join(name), sds).unwrap();
                    }
                    sds_paths += 2 * OAUTH_SECRETS_SDS.len();
                }
                let config = replace_n(
                    &config,
                    sds_paths,
                    "/etc/envoy/sds",
                    &sds_dir.display().to_string(),
                );
                let port = match edge {
                    Edge::Sso { port, .. } => *port,
                    _ => 0,
                };
                replace_n(
                    &config,
                    1,
                    "address: 0.0.0.0, port_value: 8443",
                    &format!("address: 127.0.0.1, port_value: {port}"),
                )
            }
        };
        let config = replace_n(
            &config,
            1,
            "address: 0.0.0.0, port_value: 9902",
            "address: 127.0.0.1, port_value: 0",
        );
        let config = replace_n(
            &config,
            1,
            "address: 0.0.0.0, port_value: 9903",
            "address: 127.0.0.1, port_value: 0",
        );
        let config = replace_n(
            &config,
            1,
            "port_value: 9191",
            &format!("port_value: {}", port_of(&authz.grpc_addr)),
        );
        let config = replace_n(
            &config,
            1,
            "port_value: 9192",
            &format!("port_value: {}", port_of(&authz.http_addr)),
        );
        let config = match trusted_ca {
            Some(ca) => replace_n(
                &config,
                1,
                "/etc/ssl/certs/ca-certificates.crt",
                &ca.display().to_string(),
            ),
            None => config,
        };
        let config = match max_hosts {
            Some(n) => replace_n(&config, 1, "max_hosts: 8192", &format!("max_hosts: {n}")),
            None => config,
        };
        // The admin address and the cluster the metrics listener reaches it through: a port
        // chosen here, since the cluster must know it. Free a moment ago, it can be taken before
        // Envoy binds it (another test's listener): then Envoy tries again on another.
        let mut attempts = 0;
        let (proc, admin) = loop {
            attempts += 1;
            let admin_port = format!("port_value: {}", free_port());
            let config = replace_n(&config, 2, "port_value: 9901", &admin_port);
            let started =
                try_spawn_envoy("Envoy", dir.path(), "envoy.yaml", &config, 2, extra_args).await;
            match started {
                Ok(started) => break started,
                Err(proc) if attempts < 3 && proc.stderr().contains("Address already in use") => {
                    continue;
                }
                Err(mut proc) => {
                    proc.assert_running();
                    unreachable!("Envoy exited");
                }
            }
        };
        let http = reqwest::Client::new();
        let url = format!("http://{admin}/listeners?format=json");
        let (port, metrics_port, health_port) =
            eventually("Envoy's listeners", READY_TIMEOUT, || {
                listener_ports(&http, &url)
            })
            .await;
        // LIVE once initialisation is over, health checks of the authz cluster included: only
        // then does the listener accept connections.
        eventually("Envoy to be LIVE", READY_TIMEOUT, || {
            let http = http.clone();
            let url = format!("http://{admin}/ready");
            async move {
                let response = http.get(url).send().await.ok()?;
                (response.status() == 200).then_some(())
            }
        })
        .await;
        Envoy {
            proc,
            port,
            metrics_port,
            health_port,
            admin,
            _dir: dir,
        }
    }

    /// A counter or gauge from Envoy's admin `/stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/stats?filter=^{name}$", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Writes `config` as `dir/file`, starts Envoy on it and waits for its admin address.
async fn spawn_envoy(
    what: &str,
    dir: &Path,
    file: &str,
    config: &str,
    concurrency: u32,
) -> (Proc, String) {
    spawn_envoy_with(what, dir, file, config, concurrency, &[]).await
}

/// [`spawn_envoy`], with more command-line arguments for Envoy.
async fn spawn_envoy_with(
    what: &str,
    dir: &Path,
    file: &str,
    config: &str,
    concurrency: u32,
    extra_args: &[String],
) -> (Proc, String) {
    match try_spawn_envoy(what, dir, file, config, concurrency, extra_args).await {
        Ok(started) => started,
        Err(mut proc) => {
            proc.assert_running();
            unreachable!("Envoy exited");
        }
    }
}

/// [`spawn_envoy_with`], or the process if Envoy exited before it bound its admin address.
async fn try_spawn_envoy(
    what: &str,
    dir: &Path,
    file: &str,
    config: &str,
    concurrency: u32,
    extra_args: &[String],
) -> Result<(Proc, String), Proc> {
    let config_path = dir.join(file);
    std::fs::write(&config_path, config).unwrap();
    let admin_path = dir.join(format!("{file}.admin-address"));
    let mut proc = Proc::spawn(
        "envoy",
        Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--log-level", "warn"])
            .args(["--concurrency", &concurrency.to_string()])
            .args(extra_args),
    );
    let admin = eventually(&format!("{what}'s admin address"), READY_TIMEOUT, || {
        let exited = proc.has_exited();
        let text = std::fs::read_to_string(&admin_path).ok();
        async move {
            if exited {
                return Some(None);
            }
            text.filter(|t| t.contains(':'))
                .map(|t| Some(t.trim().to_owned()))
        }
    })
    .await;
    match admin {
        Some(admin) => Ok((proc, admin)),
        None => Err(proc),
    }
}

/// Sandbox labels as the double's `POST /_double/sandboxes` takes them.
fn labels_object(labels: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
        .collect()
}

/// An edit for [`StackOptions::envoy_edits`] that uncomments the block of the shipped
/// `config_file` between the comment lines `# BEGIN {block}` and `# END {block}`, as a person
/// would: the marker lines go, and each line loses its `# ` after the indentation.
pub fn uncommented(config_file: &str, block: &str) -> (String, String) {
    let config = std::fs::read_to_string(repo_root().join(config_file)).unwrap();
    let lines: Vec<&str> = config.lines().collect();
    let begin = lines
        .iter()
        .position(|l| l.trim() == format!("# BEGIN {block}"))
        .unwrap_or_else(|| panic!("{config_file} has no `# BEGIN {block}`"));
    let end = lines
        .iter()
        .position(|l| l.trim() == format!("# END {block}"))
        .unwrap_or_else(|| panic!("{config_file} has no `# END {block}`"));
    let from = lines[begin..=end].join("\n");
    let to = lines[begin + 1..end]
        .iter()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            let rest = &line[indent..];
            let rest = rest
                .strip_prefix("# ")
                .or_else(|| rest.strip_prefix('#'))
                .unwrap_or_else(|| panic!("not a comment in {block}: {line:?}"));
            format!("{}{rest}", &line[..indent])
        })
        .collect::<Vec<_>>()
        .join("\n");
    (from, to)
}

fn replace_n(text: &str, count: usize, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        count,
        "envoy.yaml must contain {from:?} {count} time(s)"
    );
    text.replace(from, to)
}

/// The edits ([`StackOptions::envoy_edits`]) that turn tracing on in `config` (envoy.yaml's
/// text): every line between a `# --- tracing` marker and its `# --- end of tracing` loses its
/// first `# `, and the collector is the one on 127.0.0.1 at `collector_port`. Fails unless
/// there are such blocks, so a change of the shipped block cannot silently skip the test.
pub fn envoy_tracing_edits(config: &str, collector_port: u16) -> Vec<(String, String)> {
    let mut edits = Vec::new();
    let mut block: Option<(Vec<&str>, Vec<String>)> = None;
    for line in config.lines() {
        let marker = line.trim_start();
        if marker.starts_with("# --- tracing") {
            assert!(block.is_none(), "a tracing block inside another");
            block = Some((Vec::new(), Vec::new()));
        } else if marker.starts_with("# --- end of tracing") {
            let (from, to) = block.take().expect("an end without a tracing block");
            assert!(!from.is_empty(), "an empty tracing block");
            edits.push((from.join("\n"), to.join("\n")));
        } else if let Some((from, to)) = &mut block {
            let indent = line.len() - marker.len();
            let yaml = marker
                .strip_prefix("# ")
                .unwrap_or_else(|| panic!("not a commented-out line: {line:?}"));
            from.push(line);
            to.push(format!("{}{yaml}", &line[..indent]));
        }
    }
    assert!(block.is_none(), "a tracing block without its end");
    assert_eq!(
        edits.len(),
        2,
        "the listener's tracing and the collector's cluster"
    );
    let collector = "socket_address: { address: otel-collector, port_value: 4317 }";
    let port = format!("socket_address: {{ address: 127.0.0.1, port_value: {collector_port} }}");
    for (_, to) in &mut edits {
        *to = to.replace(collector, &port);
    }
    assert!(
        edits.iter().any(|(_, to)| to.contains(&port)),
        "no collector address {collector:?} in the tracing blocks"
    );
    edits
}

/// The ports Envoy bound for its public, metrics and edge health listeners, once it has bound all.
async fn listener_ports(http: &reqwest::Client, url: &str) -> Option<(u16, u16, u16)> {
    let listeners: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
    let listeners = listeners["listener_statuses"].as_array()?;
    let port = |name: &str| {
        let listener = listeners.iter().find(|listener| listener["name"] == name)?;
        let port = listener["local_address"]["socket_address"]["port_value"].as_u64()?;
        u16::try_from(port).ok().filter(|p| *p != 0)
    };
    let public = port("public_http").or_else(|| port("public_https"))?;
    Some((public, port("metrics")?, port("edge_health")?))
}

/// An HTTP answer, as a client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The double, daytona-authz and Envoy, wired together.
pub struct Stack {
    // Field order is drop order: Envoy first, so nothing is forwarded to a dead authz.
    pub envoy: Envoy,
    pub authz: Authz,
    pub double: Double,
    http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(AuthzOptions::default()).await
    }

    /// Takes [`StackOptions`], or just [`AuthzOptions`].
    pub async fn start_with(options: impl Into<StackOptions>) -> Stack {
        let options: StackOptions = options.into();
        let double = match &options.double_api_tls {
            Some((api_tls, ca)) => {
                Double::launch_with(
                    "127.0.0.1:0",
                    options.double_tls.as_ref(),
                    Some((api_tls, ca)),
                )
                .await
            }
            None => Double::start_with(options.double_tls.as_ref()).await,
        };
        let api_url = options
            .authz
            .api_url
            .clone()
            .unwrap_or_else(|| double.api_url.clone());
        // Daytona's preview URLs point at the double's proxy port: allow exactly that, unless
        // the test chose its own allow-list.
        let mut authz_options = options.authz.clone();
        if !authz_options
            .extra_args
            .iter()
            .any(|a| a == "--upstream-domain")
        {
            authz_options
                .extra_args
                .extend(double.upstream_domain_args());
        }
        let authz = Authz::start(&api_url, &authz_options).await;
        let envoy = Envoy::launch(
            &authz,
            options.envoy_trusted_ca.as_deref(),
            options.envoy_max_hosts,
            &options.edge,
            &options.envoy_args,
            &options.envoy_edits,
        )
        .await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Stack {
            envoy,
            authz,
            double,
            http,
        }
    }

    pub fn sandbox_id(&self) -> &str {
        &self.double.sandbox.id
    }

    /// The public host of a port of the default sandbox.
    pub fn host(&self, port: u16) -> String {
        host_for(self.sandbox_id(), port)
    }

    /// An access token for the default sandbox.
    pub fn token(&self, ports: Option<Vec<u16>>) -> String {
        token_for(self.sandbox_id(), ports, now() + 600)
    }

    /// Sends a request through Envoy's listener with the given Host.
    pub async fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.envoy.port);
        let mut request = self
            .http
            .request(method.parse().unwrap(), url)
            .header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request through Envoy");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", host, path, headers).await
    }
}

/// The admin API's gRPC client.
pub type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// A client of daytona-authz's admin gRPC API in `stack`.
pub async fn admin_client(stack: &Stack) -> AdminClient {
    let addr = stack.authz.admin_addr.as_deref().expect("admin API on");
    AdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// An admin API request carrying `credential` as its `authorization` metadata.
pub fn with_credential<T>(message: T, credential: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", credential.parse().unwrap());
    request
}

/// An admin API request with the suite's admin token.
pub fn authed<T>(message: T) -> tonic::Request<T> {
    with_credential(message, &bearer(ADMIN_TOKEN))
}

/// A link for port 3000 of `sandbox_id`, valid 10 minutes, minted by the admin API.
pub async fn mint_link(admin: &mut AdminClient, sandbox_id: &str) -> pb::MintLinkResponse {
    admin
        .mint_link(authed(pb::MintLinkRequest {
            sandbox_id: sandbox_id.to_owned(),
            ports: vec![3000],
            ttl_seconds: 600,
            base_url: format!("http://{{port}}-{{id}}.{PREVIEW_DOMAIN}/"),
            any_port: false,
        }))
        .await
        .expect("MintLink")
        .into_inner()
}

/// A loopback port that was free a moment ago, for a process that must keep its address across
/// a restart (`--grpc-addr 127.0.0.1:<port>` in [`AuthzOptions::extra_args`]) or that cannot
/// report the port it bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

pub fn host_for(sandbox_id: &str, port: u16) -> String {
    format!("{port}-{sandbox_id}.{PREVIEW_DOMAIN}")
}

pub fn token_for(sandbox_id: &str, ports: Option<Vec<u16>>, exp: u64) -> String {
    sign(&Claims {
        sandbox_id: sandbox_id.to_owned(),
        exp,
        ports,
        iss: None,
        aud: None,
    })
}

pub fn sign(claims: &Claims) -> String {
    let token = Signer::hs256(JWT_SECRET.as_bytes()).sign(claims).unwrap();
    remember_secret(&token);
    token
}

/// What a browser sends when a person opens a link.
pub const NAVIGATE: [(&str, &str); 3] = [
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("sec-fetch-mode", "navigate"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) daytona-authz-test",
    ),
];

/// An `Authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `name{labels}` → value, from the Prometheus text format; panics on a malformed line.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("malformed value in {line:?}"));
        let metric = name.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.insert(name.to_owned(), value);
    }
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF terminator");
    samples
}

/// The app's JSON echo: what the sandbox saw.
pub fn echoed_headers(reply: &Reply) -> BTreeMap<String, Vec<String>> {
    serde_json::from_value(reply.json()["headers"].clone()).expect("echo has headers")
}

// -------------------------------------------------------------------------------------------------
// TLS at the edge: the shipped Envoy variants, certificates, a TLS-ending proxy in front
// -------------------------------------------------------------------------------------------------

/// The SDS file envoy-tls.yaml reads its certificate through.
pub const EDGE_CERTIFICATE_SDS: &str = "envoy/sds/edge-certificate.yaml";

/// The SDS files envoy-sso.yaml reads its OAuth2 client secret and HMAC key through.
pub const OAUTH_SECRETS_SDS: [&str; 2] = [
    "envoy/sds/oauth-client-secret.yaml",
    "envoy/sds/oauth-hmac-secret.yaml",
];

/// How clients reach Envoy, i.e. which shipped config runs.
#[derive(Debug, Clone, Default)]
pub enum Edge {
    /// `envoy/envoy.yaml`: Envoy is the edge, plain HTTP.
    #[default]
    Plain,
    /// `envoy/envoy-behind-proxy.yaml`: one trusted proxy in front of Envoy ends TLS.
    BehindProxy,
    /// `envoy/envoy-tls.yaml`: Envoy ends TLS with `tls.crt` and `tls.key` from this directory
    /// (an [`EdgeCertificate`]'s).
    Tls(PathBuf),
    /// `envoy/envoy-sso.yaml`: envoy-tls.yaml with single sign-on (Envoy's OAuth2 filter before
    /// ext_authz). `certificate` as for [`Edge::Tls`]; `oauth` holds `client-secret` and
    /// `hmac-secret`. The identity provider's addresses are the test's to edit in
    /// ([`StackOptions::envoy_edits`]). The public listener binds `port` on loopback (not any
    /// free one): the callback URL registered with the provider names it.
    Sso {
        certificate: PathBuf,
        oauth: PathBuf,
        port: u16,
    },
}

impl Edge {
    /// The shipped config file, relative to the repository.
    pub fn config_file(&self) -> &'static str {
        match self {
            Edge::Plain => "envoy/envoy.yaml",
            Edge::BehindProxy => "envoy/envoy-behind-proxy.yaml",
            Edge::Tls(_) => "envoy/envoy-tls.yaml",
            Edge::Sso { .. } => "envoy/envoy-sso.yaml",
        }
    }
}

/// The first lines of every generated variant.
const GENERATED: &str = "\
# GENERATED from envoy/envoy.yaml: do not edit. Change envoy.yaml, then run
#   UPDATE_ENVOY_VARIANTS=1 cargo test --test e2e edge_tls::shipped_variants
# (test-support/src/lib.rs, `edge_variant`, says what differs; the test fails while they disagree).
#
";

/// `envoy.yaml`'s text turned into the variant for `edge`: the only source of
/// envoy-behind-proxy.yaml and envoy-tls.yaml, so the three never drift apart.
pub fn edge_variant(base: &str, edge: &Edge) -> String {
    const HOPS: &str = "\
          # --- edge hardening -------------------------------------------------------------
          # Envoy is the edge: X-Forwarded-For and X-Forwarded-Proto are set from the client's
          # own connection (a client-sent value is replaced: nobody can pass for https on this
          # plain-HTTP listener) and x-envoy-* headers from the client are dropped. TLS ended
          # by a proxy in front: envoy-behind-proxy.yaml (xff_num_trusted_hops: 1).
          use_remote_address: true
          xff_num_trusted_hops: 0
";
    const LISTENER: &str = "\
  - name: public_http
    address:
      # Public listener, plain HTTP. Over TLS, run envoy-tls.yaml (Envoy ends TLS) or
      # envoy-behind-proxy.yaml (a proxy in front ends it): README, \"TLS at the edge\".
      socket_address: { address: 0.0.0.0, port_value: 8080 }
    per_connection_buffer_limit_bytes: 1048576   # 1 MiB read/write buffer per connection
    filter_chains:
    - filters:
";
    let one = |text: &str, from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "envoy.yaml must contain this exactly once:\n{from}"
        );
        text.replacen(from, to, 1)
    };
    match edge {
        Edge::Plain => base.to_owned(),
        Edge::BehindProxy => {
            let text = one(
                base,
                HOPS,
                "\
          # --- edge hardening -------------------------------------------------------------
          # TLS ends at ONE trusted proxy in front (load balancer, ingress): Envoy believes the
          # X-Forwarded-Proto it sets (`https`: share-link cookies get Secure) and the client
          # address it appends to X-Forwarded-For; x-envoy-* headers from the client are
          # dropped. Only that proxy may reach this listener (firewall, NetworkPolicy): anyone
          # else reaching it could claim https. N proxies in a chain: xff_num_trusted_hops: N.
          use_remote_address: true
          xff_num_trusted_hops: 1
",
            );
            let text = one(
                &text,
                LISTENER,
                &LISTENER.replace(
                    "\
      # Public listener, plain HTTP. Over TLS, run envoy-tls.yaml (Envoy ends TLS) or
      # envoy-behind-proxy.yaml (a proxy in front ends it): README, \"TLS at the edge\".
",
                    "\
      # Public listener, plain HTTP from the TLS-ending proxy in front (and only from it).
",
                ),
            );
            format!(
                "{GENERATED}\
# Variant: TLS ended by one trusted proxy in front of Envoy (xff_num_trusted_hops: 1).\n\
#\n{text}"
            )
        }
        Edge::Tls(_) => format!(
            "{GENERATED}\
# Variant: Envoy ends TLS itself on port 8443, with the certificate files named in\n\
# sds/edge-certificate.yaml (mounted at /etc/envoy/sds; the PEM files at /etc/envoy/tls).\n\
#\n{}",
            tls_variant(base)
        ),
        Edge::Sso { .. } => format!(
            "{GENERATED}\
# Variant: single sign-on. envoy-tls.yaml (Envoy ends TLS on port 8443, the certificate files\n\
# named in sds/edge-certificate.yaml) with Envoy's OAuth2 filter before ext_authz: a person\n\
# without a session is sent to the identity provider and back, and daytona-authz verifies the\n\
# ID token the filter keeps in its cookie (daytona-authz --sso-token-cookie IdToken\n\
# --sso-audience <client_id> --jwks-url <the provider's JWKS>). Requests with one of\n\
# daytona-authz's own tokens (Bearer, share link, its cookie) never go to the provider.\n\
# Replace login.example.com (the provider), preview.example.com (your preview domain) and\n\
# daytona-previews (the client_id) below; README \"Single sign-on\". Mount envoy/sds at\n\
# /etc/envoy/sds, the edge certificate at /etc/envoy/tls and the OAuth2 client secret and HMAC\n\
# key files at /etc/envoy/oauth (sds/oauth-*.yaml).\n\
#\n{}",
            sso_variant(&tls_variant(base))
        ),
    }
}

/// envoy.yaml with its public listener ending TLS (envoy-tls.yaml without its header).
fn tls_variant(base: &str) -> String {
    const LISTENER: &str = "\
  - name: public_http
    address:
      # Public listener, plain HTTP. Over TLS, run envoy-tls.yaml (Envoy ends TLS) or
      # envoy-behind-proxy.yaml (a proxy in front ends it): README, \"TLS at the edge\".
      socket_address: { address: 0.0.0.0, port_value: 8080 }
    per_connection_buffer_limit_bytes: 1048576   # 1 MiB read/write buffer per connection
    filter_chains:
    - filters:
";
    let text = once(
                base,
                LISTENER,
                "\
  - name: public_https
    address:
      # Public listener: Envoy ends TLS here (HTTP/1.1 and HTTP/2 by ALPN, TLS 1.2+).
      socket_address: { address: 0.0.0.0, port_value: 8443 }
    per_connection_buffer_limit_bytes: 1048576   # 1 MiB read/write buffer per connection
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [\"h2\", \"http/1.1\"]
            tls_params: { tls_minimum_protocol_version: TLSv1_2 }
            # The certificate and key come from files through SDS (sds/edge-certificate.yaml
            # names them): Envoy reloads them when they change, without a restart or a dropped
            # connection. Rotate by replacing the files with a rename (a Kubernetes Secret
            # volume, cert-manager and certbot's symlinks all do); the SDS file itself is
            # watched too.
            tls_certificate_sds_secret_configs:
            - name: edge_certificate
              sds_config:
                path_config_source:
                  path: /etc/envoy/sds/edge-certificate.yaml
                  watched_directory: { path: /etc/envoy/sds }
                resource_api_version: V3
      filters:
",
            );
    let text = once(
        &text,
        "codec_type: AUTO                    # HTTP/1.1 and cleartext HTTP/2 (h2c)",
        "codec_type: AUTO                    # HTTP/1.1 and HTTP/2 (ALPN)",
    );
    once(
        &text,
        "\nstatic_resources:\n",
        "\n# SDS (the certificate files) needs a node name; nothing else uses it.\n\
node: { id: daytona-edge, cluster: daytona-edge }\n\nstatic_resources:\n",
    )
}

/// envoy-sso.yaml's OAuth2 filter, in front of ext_authz (replaces the start of `http_filters`).
const SSO_FILTER: &str = r#"          http_filters:
          # Order matters: oauth2 -> ext_authz -> dynamic_forward_proxy -> router.
          #
          # --- single sign-on (README "Single sign-on") ------------------------------------
          # Envoy's OAuth2 filter runs the authorization code flow with PKCE (S256, always on)
          # and keeps the session in cookies: the tokens encrypted (AES-256 keyed by the HMAC
          # secret), the whole set signed (OauthHMAC), HttpOnly, Secure, SameSite=Lax, for the
          # WHOLE preview domain (cookie_domain), so a second sandbox opens without a new
          # sign-in. On a signed-in request it decrypts the tokens in the Cookie header before
          # ext_authz: daytona-authz verifies the ID token (--sso-token-cookie IdToken) and
          # removes every one of the filter's cookies before the sandbox app sees the request.
          # The domain-wide session is an ambient credential: daytona-authz lets it
          # authenticate only top-level navigations and the sandbox's own pages (Fetch
          # Metadata, Origin), as its share-link cookie. A sandbox's page can still
          # set cookies on the preview domain (it can overwrite the session with another valid
          # one, or sign the person out); it cannot read the session (HttpOnly) nor use it
          # against another sandbox. SECURITY.md and README "Single sign-on" say more.
          - name: envoy.filters.http.oauth2
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2
              config:
                # The identity provider (OpenID Connect): its token endpoint is called by Envoy
                # through the identity_provider cluster; the other two are where browsers go.
                token_endpoint:
                  cluster: identity_provider
                  uri: https://login.example.com/oauth2/token
                  timeout: 5s
                authorization_endpoint: https://login.example.com/oauth2/authorize
                # RP-initiated logout: signing out here ends the provider's session too
                # (otherwise the next visit signs the person in again without a prompt). The
                # provider then sends the browser back to https://<the sandbox host>/, which it
                # must accept as a post-logout redirect URI (a wildcard where it allows one);
                # else name one fixed page it accepts (Envoy 1.40 validates this form):
                #   post_logout_redirect_uri: { uri: "https://platform.example.com/signed-out" }
                end_session_endpoint: https://login.example.com/oauth2/logout
                # ONE callback URL for every sandbox (register exactly this one with the
                # provider): the host is any name under the preview domain that resolves to
                # this Envoy. The filter answers it itself, before ext_authz, then sends the
                # browser back to the sandbox URL it started from.
                redirect_uri: https://sso.preview.example.com/_daytona_authz/sso/callback
                redirect_path_matcher:
                  path: { exact: /_daytona_authz/sso/callback }
                # Opened on any sandbox host: deletes the session cookies, then the provider's
                # end-session page.
                signout_path:
                  path: { exact: /_daytona_authz/sso/sign-out }
                auth_scopes: [openid, email, profile, offline_access]
                # No `Authorization: Bearer <access token>` added to signed-in requests:
                # daytona-authz reads the ID token from its cookie, and such a header would be
                # an ambient credential a caller's own Bearer could be mistaken for. (Should
                # one come anyway, daytona-authz removes it when it repeats a filter cookie.)
                forward_bearer_token: false
                # Refresh tokens renew the session when the access token (the session's
                # lifetime: OauthExpires) or the ID token (its cookie lives until the token's
                # `exp`) runs out, without sending the person to the provider.
                use_refresh_token: true
                # Requests that carry one of daytona-authz's own tokens never go to the
                # provider: a Bearer token, a share link (?access_token=) or its cookie (rename
                # here with --cookie-name), and CORS preflights (daytona-authz answers them).
                # Which of them is valid is daytona-authz's to decide, as without this filter.
                pass_through_matcher:
                - name: authorization
                  string_match: { prefix: "bearer ", ignore_case: true }
                - name: ":path"
                  string_match:
                    safe_regex: { regex: "[^?#]*\\?([^#]*&)?access_token=.*" }
                - name: cookie
                  string_match:
                    safe_regex: { regex: "(.*[;,] *)?daytona_authz=.*" }
                - name: access-control-request-method
                  present_match: true
                # Without a session, only a person's top-level navigation is sent to the
                # provider; a script's fetch/XHR, a WebSocket upgrade or a program (no
                # `Sec-Fetch-Mode: navigate`) gets 401, never a redirect it cannot follow.
                deny_redirect_matcher:
                - name: sec-fetch-mode
                  string_match: { exact: navigate }
                  invert_match: true
                  treat_missing_header_as_empty: true
                - name: upgrade
                  present_match: true
                credentials:
                  client_id: daytona-previews
                  # Secrets from files, through SDS (sds/oauth-*.yaml name the files).
                  token_secret:
                    name: oauth_client_secret
                    sds_config:
                      path_config_source:
                        path: /etc/envoy/sds/oauth-client-secret.yaml
                        watched_directory: { path: /etc/envoy/sds }
                      resource_api_version: V3
                  hmac_secret:
                    name: oauth_hmac_secret
                    sds_config:
                      path_config_source:
                        path: /etc/envoy/sds/oauth-hmac-secret.yaml
                        watched_directory: { path: /etc/envoy/sds }
                      resource_api_version: V3
                  # The preview domain: every sandbox host shares the session (and receives
                  # the cookies; daytona-authz strips them).
                  cookie_domain: preview.example.com
                cookie_configs:
                  bearer_token_cookie_config: { same_site: LAX }
                  oauth_hmac_cookie_config: { same_site: LAX }
                  oauth_expires_cookie_config: { same_site: LAX }
                  id_token_cookie_config: { same_site: LAX }
                  refresh_token_cookie_config: { same_site: LAX }
                  oauth_nonce_cookie_config: { same_site: LAX }
                  code_verifier_cookie_config: { same_site: LAX }
          # --- end of single sign-on -----------------------------------------------------------
"#;

/// envoy-sso.yaml's cluster for the identity provider's token endpoint (before the admin one).
const SSO_CLUSTER: &str = r#"  # The identity provider's token endpoint, for the OAuth2 filter (HTTPS, name checked).
  - name: identity_provider
    type: LOGICAL_DNS
    connect_timeout: 5s
    dns_lookup_family: V4_PREFERRED
    load_assignment:
      cluster_name: identity_provider
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: login.example.com, port_value: 443 }
    # --- identity provider TLS
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: login.example.com
        common_tls_context:
          tls_params: { tls_minimum_protocol_version: TLSv1_2 }
          validation_context:
            trusted_ca: { filename: /etc/ssl/certs/ca-certificates.crt }
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: { exact: login.example.com }
    # --- end of identity provider TLS
"#;

/// `text` with `from` (there exactly once) replaced by `to`.
fn once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "envoy.yaml must contain this exactly once:\n{from}"
    );
    text.replacen(from, to, 1)
}

/// The TLS variant with single sign-on: the OAuth2 filter before ext_authz, the identity
/// provider's cluster, and the per-route example without a user token exempt from it.
fn sso_variant(tls: &str) -> String {
    let text = once(
        tls,
        "          http_filters:\n          # Order matters: ext_authz -> dynamic_forward_proxy -> router.\n",
        SSO_FILTER,
    );
    let text = once(
        &text,
        "  # Envoy's own admin interface (loopback), reached only through the metrics listener's\n",
        &format!(
            "{SSO_CLUSTER}\n  # Envoy's own admin interface (loopback), reached only through the metrics listener's\n"
        ),
    );
    once(
        &text,
        "            # - name: webhooks                    # port 8080 of every sandbox, without a user token
            #   domains: [\"8080-*\"]
            #   routes: *preview_routes
            #   typed_per_filter_config:
",
        "            # - name: webhooks                    # port 8080 of every sandbox, without a user token
            #   domains: [\"8080-*\"]
            #   routes: *preview_routes
            #   typed_per_filter_config:
            #     envoy.filters.http.oauth2:          # no sign-in on this virtual host
            #       \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
            #       disabled: true
",
    )
}

/// A throwaway certificate authority, for certificates Envoy serves or trusts.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (e.g. `*.preview.test`): (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The edge's certificate as a Kubernetes Secret volume holds it: `tls.crt` and `tls.key` are
/// symlinks through `..data`, a symlink to a timestamped directory, and an update swaps `..data`
/// with a rename (what the kubelet does; cert-manager and certbot work alike).
pub struct EdgeCertificate {
    dir: tempfile::TempDir,
    generation: u32,
}

impl EdgeCertificate {
    pub fn new(cert_pem: &str, key_pem: &str) -> EdgeCertificate {
        let mut files = EdgeCertificate {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        files.replace(cert_pem, key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), files.dir.path().join(name))
                .unwrap();
        }
        files
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Puts a new certificate and key in place, atomically.
    pub fn replace(&mut self, cert_pem: &str, key_pem: &str) {
        self.generation += 1;
        let version = format!("..{}", self.generation);
        let version_dir = self.dir.path().join(&version);
        std::fs::create_dir(&version_dir).unwrap();
        std::fs::write(version_dir.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(version_dir.join("tls.key"), key_pem).unwrap();
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.path().join("..data")).unwrap();
    }
}

/// A client that trusts only `ca_pem` and reaches `host` at `127.0.0.1:port` (as a browser
/// would with DNS pointing there); no redirects followed, a fresh connection pool.
pub fn https_client(ca_pem: &str, host: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A GET of `https://{host}:{port}{path}` with `client`, as a [`Reply`].
pub async fn https_get(
    client: &reqwest::Client,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, reqwest::Error> {
    let mut request = client.get(format!("https://{host}:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    Ok(Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap_or_default(),
    })
}

/// What a load balancer or ingress in front of Envoy does, played by a second Envoy: it ends TLS
/// (certificate files given), sets `X-Forwarded-Proto` from its own connection and appends the
/// client to `X-Forwarded-For`, and forwards everything to the edge Envoy on `upstream_port`.
pub struct FrontProxy {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl FrontProxy {
    pub async fn start(upstream_port: u16, cert: &EdgeCertificate) -> FrontProxy {
        let dir = tempfile::tempdir().unwrap();
        let certs = cert.dir();
        let config = format!(
            r#"
static_resources:
  listeners:
  - name: front
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: {certs}/tls.crt }}
              private_key: {{ filename: {certs}/tls.key }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          use_remote_address: true
          upgrade_configs: [{{ upgrade_type: websocket }}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: edge, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: edge
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: edge
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
"#,
            certs = certs.display(),
        );
        let (proc, admin) =
            spawn_envoy("the front proxy", dir.path(), "front.yaml", &config, 1).await;
        let http = reqwest::Client::new();
        let port = eventually("the front proxy's listener", READY_TIMEOUT, || {
            let http = http.clone();
            let url = format!("http://{admin}/listeners?format=json");
            async move {
                let listeners: serde_json::Value =
                    http.get(url).send().await.ok()?.json().await.ok()?;
                let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                    ["port_value"]
                    .as_u64()?;
                u16::try_from(port).ok().filter(|p| *p != 0)
            }
        })
        .await;
        FrontProxy {
            proc,
            port,
            _dir: dir,
        }
    }
}
