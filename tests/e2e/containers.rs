//! The deployment files as users run them, in real containers (podman):
//! - the image the real Dockerfile builds: daytona-authz only, non-root, `--version`, `healthcheck`;
//! - docker-compose.yml (Debian's docker-compose against podman's Docker API) with the `local`
//!   profile: the README's share link, `mint` as documented, the metrics listener, `down`;
//! - deploy/kubernetes as a pod, run by `scripts/kubelet` (a kubelet stand-in: Secret files
//!   root-owned with `defaultMode` and group `fsGroup`, probes, preStop, SIGTERM, grace), with the
//!   admin API reached through a port-forward; and the pod as item 3 of issue 15 shipped it (no
//!   `fsGroup`, `defaultMode: 0400`), which must not come up.
//!
//! The images come from `scripts/container-images` (base images under the names our files use,
//! made from Debian packages and this machine's Rust and Envoy where no registry is reachable, and
//! the real Dockerfile built by podman); `scripts/test` runs it and sets
//! `DAYTONA_AUTHZ_CONTAINER_IMAGES=1`. Without it these tests skip, unless `CI` is set.
//! All traffic stays on this machine: host networking on loopback, or a network namespace the test
//! made itself (compose's bridge network and the pod live in one; curl reaches them through a
//! port-forward, as `kubectl port-forward` does). Needs root (network namespaces).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Proc, eventually, free_port, repo_root};

/// The double's sandbox in docker-compose.yml (and in the pod the tests run).
const SANDBOX: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
/// Starting containers, building from a warm layer cache, pulling nothing: generous, bounded.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One container test at a time: they share podman's storage lock, and a liveness probe
/// (`podman exec`) waiting on it behind another test's build or compose run could miss its
/// timeout and restart a container under test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn images_ready(test: &str) -> bool {
    if std::env::var_os("DAYTONA_AUTHZ_CONTAINER_IMAGES").is_some() {
        return true;
    }
    support::skip(
        test,
        "no container images",
        "run scripts/container-images (scripts/test does), then set \
         DAYTONA_AUTHZ_CONTAINER_IMAGES=1",
    );
    false
}

fn podman() -> Command {
    let mut command = Command::new(repo_root().join("scripts/podman"));
    command.current_dir(repo_root());
    command
}

fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// Runs `command` to completion within `timeout` (the `timeout` program), returning its output.
fn run(what: &str, command: &mut Command, timeout: Duration) -> Output {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let mut bounded = Command::new("timeout");
    bounded
        .arg("--kill-after=5")
        .arg(timeout.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => bounded.env(key, value),
            None => bounded.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        bounded.current_dir(dir);
    }
    bounded
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn run_ok(what: &str, command: &mut Command, timeout: Duration) -> String {
    let output = run(what, command, timeout);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The share link in what `daytona-authz mint` printed.
fn link_in(minted: &str) -> String {
    minted
        .lines()
        .find(|l| l.starts_with("http://"))
        .unwrap_or_else(|| panic!("mint printed no link: {minted}"))
        .trim()
        .to_owned()
}

/// What curl says: status and body. `connect_to` sends every connection to 127.0.0.1:that port
/// whatever the URL's host and port (curl's `--connect-to`), so share links keep their own host.
fn curl(url: &str, connect_to: u16, extra: &[&str]) -> (u16, String) {
    let jar = tempfile::NamedTempFile::new().unwrap();
    let output = run_ok(
        "curl",
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-L", "--max-redirs", "3"])
            .args(["-c", &jar.path().display().to_string()])
            .args(["-b", &jar.path().display().to_string()])
            .args(["--connect-to", &format!("::127.0.0.1:{connect_to}")])
            .args(["-w", "\n%{http_code}"])
            .args(extra)
            .arg(url),
        Duration::from_secs(15),
    );
    let (body, status) = output.rsplit_once('\n').expect("curl -w printed a status");
    (status.trim().parse().expect("status code"), body.to_owned())
}

/// curl until it answers `status` (the stack is starting).
async fn curl_until(url: &str, connect_to: u16, status: u16, extra: &[&str]) -> String {
    eventually(&format!("{url} to answer {status}"), START_TIMEOUT, || {
        let output = Command::new("curl")
            .args(["-s", "--max-time", "3", "-o", "-", "-w", "\n%{http_code}"])
            .args(["--connect-to", &format!("::127.0.0.1:{connect_to}")])
            .args(extra)
            .arg(url)
            .output();
        let found = output.ok().and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let (body, code) = text.rsplit_once('\n')?;
            (code.trim() == status.to_string()).then(|| body.to_owned())
        });
        async move { found }
    })
    .await
}

/// A network namespace of the test's own (loopback only), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}-{}", std::process::id(), free_port());
        run_ok(
            "ip netns add",
            Command::new("ip").args(["netns", "add", &name]),
            Duration::from_secs(10),
        );
        run_ok(
            "ip link set lo up",
            Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]),
            Duration::from_secs(10),
        );
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// `scripts/kubelet` events (JSON lines on its stdout) seen so far.
fn events(proc: &Proc) -> Vec<Value> {
    proc.stdout()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn has_event(proc: &Proc, event: &str) -> bool {
    events(proc).iter().any(|e| e["event"] == event)
}

/// pod port → this machine's port, from `forward` events.
async fn forwards(proc: &Proc, wanted: usize) -> HashMap<u16, u16> {
    eventually("the port-forwards", Duration::from_secs(30), || {
        let found: HashMap<u16, u16> = events(proc)
            .iter()
            .filter(|e| e["event"] == "forward")
            .map(|e| {
                (
                    e["pod_port"].as_u64().unwrap() as u16,
                    e["host_port"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        let done = (found.len() >= wanted).then_some(found);
        async move { done }
    })
    .await
}

fn signal(proc: &Proc, name: &str) {
    Command::new("kill")
        .args([&format!("-{name}"), &proc.pid().to_string()])
        .status()
        .expect("kill");
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// -------------------------------------------------------------------------------------------------
// The image
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_image_holds_daytona_authz_only_runs_as_non_root_and_answers_healthcheck() {
    if !images_ready("the_image_holds_daytona_authz_only_runs_as_non_root_and_answers_healthcheck")
    {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let timeout = Duration::from_secs(60);
    let version = run_ok(
        "daytona-authz --version in the image",
        podman().args([
            "run",
            "--rm",
            "--network=host",
            "daytona-authz:test",
            "--version",
        ]),
        timeout,
    );
    assert!(version.starts_with("daytona-authz "), "{version}");
    let uid = run_ok(
        "id -u in the image",
        podman().args([
            "run",
            "--rm",
            "--network=host",
            "--entrypoint",
            "id",
            "daytona-authz:test",
            "-u",
        ]),
        timeout,
    );
    assert_eq!(
        uid.trim(),
        "65532",
        "the image must run as the non-root uid 65532"
    );
    let listing = run_ok(
        "ls /usr/local/bin in the image",
        podman().args([
            "run",
            "--rm",
            "--network=host",
            "--entrypoint",
            "ls",
            "daytona-authz:test",
            "/usr/local/bin",
        ]),
        timeout,
    );
    assert_eq!(
        listing.split_whitespace().collect::<Vec<_>>(),
        ["daytona-authz"],
        "the product image holds daytona-authz and nothing else (no test double)"
    );

    // Served against the double's image, on this machine's loopback (host network, free ports).
    let secrets = tempfile::tempdir().unwrap();
    let api_key = random_hex(24);
    std::fs::write(secrets.path().join("daytona_api_key"), &api_key).unwrap();
    std::fs::write(secrets.path().join("jwt_secret"), random_hex(32)).unwrap();
    for file in ["daytona_api_key", "jwt_secret"] {
        set_mode(&secrets.path().join(file), 0o644);
    }
    let [api, proxy, grpc, http, admin] = [(); 5].map(|()| free_port());
    let suffix = format!("{}-{}", std::process::id(), free_port());
    let containers = Containers(vec![
        format!("dz-image-double-{suffix}"),
        format!("dz-image-authz-{suffix}"),
    ]);
    run_ok(
        "the double's image",
        podman()
            .args(["run", "-d", "--name", &containers.0[0], "--network=host"])
            .args(["-e", &format!("DAYTONA_DOUBLE_API_KEY={api_key}")])
            .arg("daytona-double:test")
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--proxy-addr", &format!("127.0.0.1:{proxy}")])
            .args(["--sandbox", SANDBOX]),
        timeout,
    );
    run_ok(
        "the product image, serving",
        podman()
            .args(["run", "-d", "--name", &containers.0[1], "--network=host"])
            .args([
                "-v",
                &format!("{}:/run/secrets:ro", secrets.path().display()),
            ])
            .args(["-e", &format!("DAYTONA_API_URL=http://127.0.0.1:{api}/api")])
            .args(["-e", "DAYTONA_API_KEY_FILE=/run/secrets/daytona_api_key"])
            .args([
                "-e",
                "DAYTONA_AUTHZ_JWT_SECRET_FILE=/run/secrets/jwt_secret",
            ])
            .args(["-e", "DAYTONA_AUTHZ_PREVIEW_DOMAIN=preview.localhost"])
            .args(["-e", &format!("DAYTONA_AUTHZ_GRPC_ADDR=127.0.0.1:{grpc}")])
            .args(["-e", &format!("DAYTONA_AUTHZ_HTTP_ADDR=127.0.0.1:{http}")])
            .args(["-e", &format!("DAYTONA_AUTHZ_ADMIN_ADDR=127.0.0.1:{admin}")])
            .arg("daytona-authz:test"),
        timeout,
    );
    // The image's HEALTHCHECK command, run inside the container as Docker would run it.
    let name = containers.0[1].clone();
    eventually(
        "`daytona-authz healthcheck` in the container",
        timeout,
        || {
            let ok = podman()
                .args(["exec", &name, "daytona-authz", "healthcheck"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            async move { ok.then_some(()) }
        },
    )
    .await;
    run_ok(
        "healthcheck --live",
        podman().args(["exec", &name, "daytona-authz", "healthcheck", "--live"]),
        timeout,
    );
    let healthcheck = run_ok(
        "the image's HEALTHCHECK",
        podman().args(["inspect", "--format", "{{json .Config.Healthcheck}}", &name]),
        timeout,
    );
    assert!(
        healthcheck.contains("daytona-authz") && healthcheck.contains("healthcheck"),
        "{healthcheck}"
    );
}

/// Containers removed (forcibly) on drop.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = podman()
                .args(["rm", "-f", "-t", "0", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// -------------------------------------------------------------------------------------------------
// docker-compose.yml
// -------------------------------------------------------------------------------------------------

/// docker-compose.yml in a project folder of its own (a copy of the build context, the Envoy
/// config and the compose file, unchanged; never the repository's `secrets/`), against a podman
/// API service running in a network namespace of the test's: compose's bridge network and its
/// published ports exist only in there.
struct Compose {
    // Dropped in this order: the API service, then its namespace, then the folder.
    _service: Proc,
    netns: Netns,
    dir: tempfile::TempDir,
    project: String,
    socket: PathBuf,
}

impl Compose {
    async fn new() -> Compose {
        let dir = tempfile::tempdir().unwrap();
        let root = repo_root();
        for entry in [
            "Dockerfile",
            ".dockerignore",
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "docker-compose.yml",
            "docker-compose.redis.yml",
        ] {
            std::fs::copy(root.join(entry), dir.path().join(entry)).unwrap();
        }
        for folder in [
            "proto",
            "benches",
            "src",
            "daytona-double",
            "load-tools",
            "test-support",
            "envoy",
        ] {
            run_ok(
                "copy the build context",
                Command::new("cp")
                    .arg("-a")
                    .arg(root.join(folder))
                    .arg(dir.path()),
                Duration::from_secs(30),
            );
        }
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        std::fs::write(secrets.join("daytona_api_key"), random_hex(24)).unwrap();
        std::fs::write(secrets.join("jwt_secret"), random_hex(32)).unwrap();

        let netns = Netns::new("dz-compose");
        let socket = dir.path().join("podman.sock");
        let service = Proc::spawn(
            "podman system service",
            Command::new("nsenter")
                .arg(format!("--net={}", netns.path()))
                .arg(root.join("scripts/podman"))
                .args(["system", "service", "--time=0"])
                .arg(format!("unix://{}", socket.display())),
        );
        let probe = socket.clone();
        eventually("podman's API socket", Duration::from_secs(30), || {
            let exists = probe.exists();
            async move { exists.then_some(()) }
        })
        .await;
        Compose {
            project: format!("dzcompose{}", free_port()),
            dir,
            socket,
            _service: service,
            netns,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(self.dir.path())
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("COMPOSE_PROJECT_NAME", &self.project)
            // The documented commands name no other variable (`run … mint` needs none).
            .env_remove("PREVIEW_DOMAIN")
            .env_remove("DAYTONA_API_URL");
        command
    }

    fn running(&self) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        run_ok(
            "podman ps",
            podman().args(["ps", "--filter", &label, "--format", "{{.Names}}"]),
            Duration::from_secs(30),
        )
        .trim()
        .to_owned()
    }

    fn leftovers(&self) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let containers = run_ok(
            "podman ps",
            podman().args(["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]),
            Duration::from_secs(30),
        );
        let volumes = run_ok(
            "podman volume ls",
            podman().args(["volume", "ls", "--filter", &label, "--format", "{{.Name}}"]),
            Duration::from_secs(30),
        );
        let networks = run_ok(
            "podman network ls",
            podman().args(["network", "ls", "--format", "{{.Name}}"]),
            Duration::from_secs(30),
        );
        let networks: Vec<_> = networks
            .lines()
            .filter(|n| n.starts_with(&self.project))
            .collect();
        format!("{containers}{volumes}{}", networks.join("\n"))
            .trim()
            .to_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        // A test that failed half-way leaves nothing behind either.
        let _ = run(
            "docker-compose down",
            self.command()
                .args(["--profile", "local", "down", "-v", "-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            Duration::from_secs(60),
        );
        let label = format!("label=com.docker.compose.project={}", self.project);
        let listed = |args: &[&str]| -> Vec<String> {
            podman().args(args).output().map_or_else(
                |_| Vec::new(),
                |o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                },
            )
        };
        for id in listed(&["ps", "-a", "-q", "--filter", &label]) {
            let _ = podman().args(["rm", "-f", "-t", "0", &id]).output();
        }
        for volume in listed(&["volume", "ls", "-q", "--filter", &label]) {
            let _ = podman().args(["volume", "rm", "-f", &volume]).output();
        }
        for network in listed(&["network", "ls", "--format", "{{.Name}}"]) {
            if network.starts_with(&self.project) {
                let _ = podman().args(["network", "rm", "-f", &network]).output();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_local_profile_serves_the_readmes_share_link_and_down_leaves_nothing() {
    if !images_ready("compose_local_profile_serves_the_readmes_share_link_and_down_leaves_nothing")
    {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let compose = Compose::new().await;

    // The README's command for everything local (with the layer cache of scripts/container-images,
    // the build is a cache hit).
    run_ok(
        "docker compose --profile local up --build",
        compose
            .command()
            .env("PREVIEW_DOMAIN", "preview.localhost")
            .env("DAYTONA_API_URL", "http://127.0.0.1:3000/api")
            .args(["--profile", "local", "up", "-d", "--build"]),
        Duration::from_secs(600),
    );
    let forward = Proc::spawn(
        "port-forward",
        Command::new(python())
            .arg(repo_root().join("scripts/kubelet"))
            .args(["forward", "--netns", &compose.netns.path()])
            .args(["8080", "9902", "9903"]),
    );
    let ports = forwards(&forward, 3).await;
    let (edge, metrics, health) = (ports[&8080], ports[&9902], ports[&9903]);

    // Envoy's edge health: 200 once Envoy reaches a healthy daytona-authz.
    curl_until("http://127.0.0.1/healthz", health, 200, &[]).await;
    // The service's compose healthcheck command, as Docker runs it (podman runs healthchecks
    // from systemd timers, which these machines lack, so the test runs it).
    run_ok(
        "docker compose exec daytona-authz daytona-authz healthcheck",
        compose.command().args([
            "exec",
            "-T",
            "daytona-authz",
            "daytona-authz",
            "healthcheck",
        ]),
        Duration::from_secs(60),
    );

    // The documented mint command, word for word, with no variable exported. docker-compose 1.x
    // links a one-off container to the running containers of its service, and podman's API
    // refuses links ("link is not supported"; Docker accepts them): daytona-authz is stopped
    // for the `run` and started again, which also shows that a restart keeps serving.
    run_ok(
        "docker compose stop daytona-authz",
        compose.command().args(["stop", "-t", "5", "daytona-authz"]),
        Duration::from_secs(60),
    );
    let link = run_ok(
        "docker compose run --rm --no-deps daytona-authz mint …",
        compose.command().args([
            "run",
            "--rm",
            "--no-deps",
            "daytona-authz",
            "mint",
            "--jwt-secret-file",
            "/run/secrets/jwt_secret",
            "--sandbox",
            SANDBOX,
            "--port",
            "3000",
            "--ttl",
            "1h",
            "--base-url",
            "http://{port}-{id}.preview.localhost:8080/",
        ]),
        Duration::from_secs(120),
    );
    let link = link_in(&link);
    assert!(
        link.starts_with(&format!("http://3000-{SANDBOX}.preview.localhost:8080/")),
        "{link}"
    );
    run_ok(
        "docker compose start daytona-authz",
        compose.command().args(["start", "daytona-authz"]),
        Duration::from_secs(60),
    );
    curl_until("http://127.0.0.1/healthz", health, 200, &[]).await;

    let (status, body) = curl(&link, edge, &[]);
    assert_eq!(status, 200, "the share link: {body}");
    let bare = link.split('?').next().unwrap();
    let (status, _) = curl(bare, edge, &[]);
    assert_eq!(status, 401, "no token");
    let (status, body) = curl("http://127.0.0.1:9902/metrics", metrics, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("daytona_authz_"), "daytona-authz's metrics");

    // down stops everything and leaves nothing: containers, the state volume, the network.
    // podman removes containers in parallel and refuses to remove Envoy while the containers
    // sharing its network namespace still exist (Docker does not); those are gone by then, so a
    // second `down` finishes the job (README, "docker-compose with podman").
    let down = || {
        run(
            "docker compose --profile local down -v",
            compose
                .command()
                .args(["--profile", "local", "down", "-v", "-t", "5"]),
            Duration::from_secs(120),
        )
    };
    let first = down();
    assert_eq!(
        compose.running(),
        "",
        "still running after `docker compose down`"
    );
    if !first.status.success() {
        let stderr = String::from_utf8_lossy(&first.stderr);
        assert!(
            stderr.contains("dependent containers"),
            "down failed: {stderr}"
        );
        let second = down();
        assert!(
            second.status.success(),
            "a second down: {}",
            String::from_utf8_lossy(&second.stderr)
        );
    }
    assert_eq!(
        compose.leftovers(),
        "",
        "left behind by `docker compose down -v`"
    );

    // Several replicas: docker-compose.redis.yml on top points daytona-authz at the shared Redis,
    // and compose refuses to start without REDIS_URL rather than fall back to the local store.
    let with_redis = |url: Option<&str>| {
        let mut command = compose.command();
        command.args([
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.redis.yml",
            "config",
        ]);
        if let Some(url) = url {
            command.env("REDIS_URL", url);
        }
        run(
            "docker compose config",
            &mut command,
            Duration::from_secs(60),
        )
    };
    let refused = with_redis(None);
    assert!(
        !refused.status.success(),
        "compose must refuse an unset REDIS_URL"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("set REDIS_URL to the shared Redis"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let rendered = with_redis(Some("rediss://redis.internal:6380/0"));
    assert!(
        String::from_utf8_lossy(&rendered.stdout)
            .contains("DAYTONA_AUTHZ_REDIS_URL: rediss://redis.internal:6380/0"),
        "{}",
        String::from_utf8_lossy(&rendered.stdout)
    );
}

// -------------------------------------------------------------------------------------------------
// deploy/kubernetes as a pod
// -------------------------------------------------------------------------------------------------

/// A pod of deploy/kubernetes, run by scripts/kubelet from a kustomize overlay (in a temporary
/// folder) that adds the Daytona double as a container of the pod and points daytona-authz at it.
struct Pod {
    runner: Proc,
    name: String,
    _overlay: tempfile::TempDir,
    _secret: tempfile::TempDir,
    admin_token: PathBuf,
    logs: tempfile::TempDir,
}

impl Pod {
    /// `extra_patch` is YAML merged into the Deployment (strategic merge, as kustomize does).
    fn start(extra_patch: &str, grace_period: Option<u32>) -> Pod {
        Pod::start_from("deploy/kubernetes", extra_patch, &[], grace_period)
    }

    /// A pod of the kustomization in `base` (relative to the repository), with `extra_secret`
    /// keys in the daytona-authz Secret beside the README's three.
    fn start_from(
        base: &str,
        extra_patch: &str,
        extra_secret: &[(&str, &str)],
        grace_period: Option<u32>,
    ) -> Pod {
        let overlay = tempfile::tempdir().unwrap();
        let base = repo_root().join(base);
        std::fs::write(
            overlay.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\n\
                 kind: Kustomization\n\
                 resources:\n  - {}\n\
                 configMapGenerator:\n\
                 \x20 - name: daytona-authz\n\
                 \x20   behavior: merge\n\
                 \x20   literals:\n\
                 \x20     - DAYTONA_API_URL=http://127.0.0.1:3000/api\n\
                 \x20     - DAYTONA_AUTHZ_PREVIEW_DOMAIN=preview.localhost\n\
                 patches:\n  - path: double.yaml\n  - path: extra.yaml\n",
                base.display()
            ),
        )
        .unwrap();
        std::fs::write(
            overlay.path().join("double.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: daytona-authz\n\
                 spec:\n  template:\n    spec:\n      containers:\n\
                 \x20       - name: daytona-double\n\
                 \x20         image: daytona-double:test\n\
                 \x20         args: [--api-addr, 127.0.0.1:3000, --proxy-addr, 127.0.0.1:4000,\n\
                 \x20                --sandbox, {SANDBOX}]\n\
                 \x20         env:\n\
                 \x20           - name: DAYTONA_DOUBLE_API_KEY\n\
                 \x20             valueFrom:\n\
                 \x20               secretKeyRef: {{ name: daytona-authz, key: daytona-api-key }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            overlay.path().join("extra.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: daytona-authz\n\
                 {extra_patch}"
            ),
        )
        .unwrap();

        // kubectl create secret generic daytona-authz --from-file=…, as the README says.
        let secret = tempfile::tempdir().unwrap();
        let admin_token = secret.path().join("admin-token");
        for (key, value) in [
            ("daytona-api-key", random_hex(24)),
            ("jwt-secret", random_hex(32)),
            ("admin-token", random_hex(32)),
        ] {
            // No container log may print them (checked when the pod is deleted).
            support::remember_secret(&value);
            std::fs::write(secret.path().join(key), value).unwrap();
        }
        for (key, value) in extra_secret {
            std::fs::write(secret.path().join(key), value).unwrap();
        }

        let name = format!("dz-pod-{}-{}", std::process::id(), free_port());
        let logs = tempfile::tempdir().unwrap();
        let mut command = Command::new(python());
        command
            .arg(repo_root().join("scripts/kubelet"))
            .args(["run", "--kustomize"])
            .arg(overlay.path())
            .arg("--secret")
            .arg(format!("daytona-authz={}", secret.path().display()))
            .args(["--name", &name])
            .args([
                "--forward",
                "8080",
                "--forward",
                "9902",
                "--forward",
                "9903",
            ])
            .args(["--forward", "9193"])
            .arg("--log-dir")
            .arg(logs.path());
        if let Some(seconds) = grace_period {
            command.args(["--grace-period", &seconds.to_string()]);
        }
        Pod {
            runner: Proc::spawn("scripts/kubelet", &mut command),
            name,
            _overlay: overlay,
            _secret: secret,
            admin_token,
            logs,
        }
    }

    async fn wait_event(&self, what: &str, timeout: Duration, matches: impl Fn(&Value) -> bool) {
        eventually(what, timeout, || {
            let found = events(&self.runner).iter().any(&matches);
            let failed = has_event(&self.runner, "error") || has_event(&self.runner, "deleted");
            assert!(
                found || !failed,
                "the pod failed before {what}:\n{}\n{}",
                self.runner.stdout(),
                self.runner.stderr()
            );
            async move { found.then_some(()) }
        })
        .await
    }

    /// Waits for the pod to be ready; its port-forwards, pod port → this machine's port.
    async fn ready(&self) -> HashMap<u16, u16> {
        self.wait_event("the pod to be ready", START_TIMEOUT, |e| {
            e["event"] == "ready"
        })
        .await;
        forwards(&self.runner, 4).await
    }

    /// `daytona-authz ARGS --admin-url … --admin-token-file …` on this machine, against the
    /// pod's admin API through the port-forward at `admin_port`.
    fn admin_cli(&self, admin_port: u16, args: &[&str]) -> String {
        let (command, rest) = args.split_first().expect("a subcommand");
        run_ok(
            &format!("daytona-authz {command} --admin-url …"),
            Command::new(env!("CARGO_BIN_EXE_daytona-authz"))
                .arg(command)
                .args(["--admin-url", &format!("http://127.0.0.1:{admin_port}")])
                .arg("--admin-token-file")
                .arg(&self.admin_token)
                .args(rest),
            Duration::from_secs(30),
        )
    }

    /// A share link for port 3000 of the double's sandbox, minted by the pod's admin API.
    fn mint(&self, admin_port: u16) -> String {
        link_in(&self.admin_cli(
            admin_port,
            &[
                "mint",
                "--sandbox",
                SANDBOX,
                "--port",
                "3000",
                "--ttl",
                "1h",
                "--base-url",
                "http://{port}-{id}.preview.localhost:8080/",
            ],
        ))
    }

    /// Revokes the double's sandbox through the pod's admin API.
    fn revoke(&self, admin_port: u16) {
        self.admin_cli(admin_port, &["revoke", "--sandbox", SANDBOX]);
    }

    fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    /// `kubectl delete pod`: the runner plays the termination and removes everything.
    async fn delete(&mut self, timeout: Duration) -> Vec<Value> {
        signal(&self.runner, "TERM");
        let status = self.runner.wait_exit(timeout).await;
        assert!(
            status.success(),
            "scripts/kubelet: {status}\n{}",
            self.runner.stderr()
        );
        events(&self.runner)
    }

    fn log(&self, container: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{container}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if has_event(&self.runner, "deleted") {
            return;
        }
        // The test failed half-way: remove the pod at once, and the runner's copies of the
        // Secret's files.
        self.runner.kill();
        for event in events(&self.runner) {
            if let Some(dir) = event["state_dir"].as_str() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        for container in ["envoy", "daytona-authz", "daytona-double", "redis"] {
            let _ = podman()
                .args(["rm", "-f", "-t", "0", &self.container(container)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_pod_serves_the_share_link_and_stops_in_drain_order() {
    if !images_ready("the_kubernetes_pod_serves_the_share_link_and_stops_in_drain_order") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut pod = Pod::start("", None);
    let ports = pod.ready().await;
    let (edge, metrics, health, admin) = (ports[&8080], ports[&9902], ports[&9903], ports[&9193]);

    // The Secret as the kubelet mounts it: root-owned, group fsGroup, 0440; read by uid 65532.
    let modes = run_ok(
        "stat the secret files",
        podman().args([
            "exec",
            &pod.container("daytona-authz"),
            "stat",
            "-L",
            "-c",
            "%n %u:%g %a",
            "/run/secrets/daytona-authz/jwt-secret",
            "/run/secrets/daytona-authz/daytona-api-key",
            "/run/secrets/daytona-authz/admin-token",
        ]),
        Duration::from_secs(30),
    );
    for line in modes.lines() {
        assert!(line.ends_with(" 0:65532 440"), "{line}");
    }
    let id = run_ok(
        "id in the daytona-authz container",
        podman().args(["exec", &pod.container("daytona-authz"), "id", "-u"]),
        Duration::from_secs(30),
    );
    assert_eq!(id.trim(), "65532");

    let (status, _) = curl("http://127.0.0.1/healthz", health, &[]);
    assert_eq!(status, 200, "edge health");

    // An operator's mint and revoke through `kubectl port-forward deploy/daytona-authz 9193`, with
    // daytona-authz on this machine as the README shows.
    let link = pod.mint(admin);
    let (status, body) = curl(&link, edge, &[]);
    assert_eq!(
        status, 200,
        "the share link through the pod's Envoy: {body}"
    );
    let (status, _) = curl(link.split('?').next().unwrap(), edge, &[]);
    assert_eq!(status, 401, "no token");
    let (status, body) = curl("http://127.0.0.1:9902/metrics", metrics, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("daytona_authz_"));

    pod.revoke(admin);
    let (status, _) = curl(&link, edge, &[]);
    assert_eq!(status, 403, "the share link after the sandbox was revoked");

    // kubectl delete pod: preStop hooks, then SIGTERM, within terminationGracePeriodSeconds.
    let events = pod.delete(Duration::from_secs(90)).await;
    let of = |event: &str, container: &str| -> Value {
        events
            .iter()
            .find(|e| e["event"] == event && e["container"] == container)
            .cloned()
            .unwrap_or_else(|| panic!("no {event} event for {container}: {events:?}"))
    };
    for container in ["envoy", "daytona-authz"] {
        assert_eq!(
            of("prestop", container)["ok"],
            true,
            "{container}'s preStop"
        );
        let stopped = of("stopped", container);
        assert_eq!(
            stopped["code"], 0,
            "{container} exits 0 on SIGTERM: {stopped}"
        );
        assert!(
            stopped["seconds"].as_f64().unwrap() < 45.0,
            "{container} within the grace period: {stopped}"
        );
    }
    let envoy_done = of("stopped", "envoy")["seconds"].as_f64().unwrap();
    let authz_done = of("stopped", "daytona-authz")["seconds"].as_f64().unwrap();
    assert!(
        envoy_done < authz_done,
        "Envoy stops before daytona-authz (envoy {envoy_done} s, daytona-authz {authz_done} s)"
    );
    let authz_log = pod.log("daytona-authz");
    assert!(
        authz_log.contains("daytona-authz listening"),
        "the runner kept daytona-authz's log: {authz_log}"
    );
    for container in ["envoy", "daytona-authz"] {
        support::assert_no_secret(container, &pod.log(container));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pod_as_first_shipped_cannot_read_its_secret_and_never_becomes_ready() {
    if !images_ready("the_pod_as_first_shipped_cannot_read_its_secret_and_never_becomes_ready") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    // Item 3 of issue 15: no fsGroup, the Secret 0400. The kubelet mounts the files root:root
    // 0400; daytona-authz (uid 65532) cannot read its API key and exits 64.
    let mut pod = Pod::start(
        "spec:\n  template:\n    spec:\n      securityContext:\n        fsGroup: null\n\
         \x20     volumes:\n        - name: secrets\n          secret:\n            defaultMode: 0400\n",
        Some(1),
    );
    // It exits, is restarted (a new container, after the kubelet's 10 s back-off) and exits again.
    pod.wait_event("daytona-authz to exit twice", START_TIMEOUT, |e| {
        e["event"] == "exited" && e["container"] == "daytona-authz" && e["restarts"] == 1
    })
    .await;
    let events = pod.delete(Duration::from_secs(60)).await;
    for exited in events
        .iter()
        .filter(|e| e["event"] == "exited" && e["container"] == "daytona-authz")
    {
        assert_eq!(exited["code"], 64, "exit 64 (configuration): {exited}");
    }
    assert!(
        !events.iter().any(|e| e["event"] == "ready"),
        "the pod must never be ready: {events:?}"
    );
    let log = pod.log("daytona-authz");
    assert!(
        log.to_lowercase().contains("permission denied"),
        "daytona-authz says why: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replicas_overlay_keeps_revocations_in_redis_from_its_secret() {
    if !images_ready("the_replicas_overlay_keeps_revocations_in_redis_from_its_secret") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    // deploy/kubernetes/replicas as applied (`kubectl apply -k`), with a Redis beside the pod's
    // containers standing in for the shared Redis, its URL in the Secret's `redis-url` key.
    let mut pod = Pod::start_from(
        "deploy/kubernetes/replicas",
        "spec:\n  template:\n    spec:\n      containers:\n\
         \x20       - name: redis\n\
         \x20         image: redis:7-bookworm\n\
         \x20         args: [redis-server, --port, \"6379\", --bind, 127.0.0.1, --save, \"\"]\n\
         \x20         securityContext: { runAsUser: 65534 }\n",
        &[("redis-url", "redis://127.0.0.1:6379/0")],
        Some(3),
    );
    let ports = pod.ready().await;
    let (edge, admin) = (ports[&8080], ports[&9193]);
    let link = pod.mint(admin);
    assert_eq!(curl(&link, edge, &[]).0, 200, "the share link");
    pod.revoke(admin);
    assert_eq!(curl(&link, edge, &[]).0, 403, "revoked");
    // The revocation is in Redis, where every replica reads it.
    let keys = run_ok(
        "redis-cli --scan",
        podman().args(["exec", &pod.container("redis"), "redis-cli", "--scan"]),
        Duration::from_secs(30),
    );
    assert!(
        keys.lines().any(|k| k.starts_with("daytona-authz:")),
        "daytona-authz's keys in Redis: {keys:?}"
    );
    let values = run_ok(
        "redis-cli dump",
        podman().args([
            "exec",
            &pod.container("redis"),
            "sh",
            "-c",
            "redis-cli --scan | while read -r k; do redis-cli --raw type \"$k\"; \
             redis-cli --raw hgetall \"$k\" 2>/dev/null; redis-cli --raw smembers \"$k\" 2>/dev/null; \
             redis-cli --raw zrange \"$k\" 0 -1 2>/dev/null; redis-cli --raw get \"$k\" 2>/dev/null; done",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        values.contains(SANDBOX),
        "the revoked sandbox in Redis: {values}"
    );
    pod.delete(Duration::from_secs(60)).await;
    let log = pod.log("daytona-authz");
    assert!(
        log.contains("\"revocations\":\"redis\""),
        "daytona-authz used Redis: {log}"
    );
}
