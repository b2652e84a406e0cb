//! A share link in a real browser: headless Chromium opens a minted link through Envoy and
//! daytona-authz and ends up on the sandbox app's page, not in a redirect loop and not on
//! Daytona's preview-warning page.
//!
//! Needs Chromium: `CHROMIUM_BIN`, else `chromium` on PATH (`scripts/install-debian chromium
//! chromium` installs it; `scripts/test` runs it first). Without one the test skips, unless `CI`
//! is set.

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use daytona_authz::token::now;
use support::{Stack, optional_program, token_for};

/// Chromium gets this long to load the page and print it before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished Chromium run printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A pipe read to its end on a thread; what arrived so far can be taken at any time, so a
/// process that hangs (or a helper that keeps the pipe open) never blocks the test.
struct Drain {
    buffer: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

impl Drain {
    fn new(mut stream: impl Read + Send + 'static) -> Drain {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0; 8192];
            while let Ok(n @ 1..) = stream.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Drain { buffer, reader }
    }

    fn done(&self) -> bool {
        self.reader.is_finished()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

/// Runs `command` in its own process group and waits for it and for its output to end. If that
/// takes longer than `timeout`, kills the whole group (Chromium's zygote, renderer and other
/// helpers too) and fails the test with what it printed.
async fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
    // The child leads its group, so the group's id is the child's.
    let group = child.id();
    let stdout = Drain::new(child.stdout.take().expect("piped"));
    let stderr = Drain::new(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + timeout;
    let mut exited = false;
    let timed_out = loop {
        exited = exited || child.try_wait().expect("try_wait").is_some();
        if exited && stdout.done() && stderr.done() {
            break false;
        }
        if Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if timed_out {
        kill_group(group);
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    assert!(
        !timed_out,
        "chromium did not finish within {timeout:?} (exited: {exited}); killed it. \
         stdout:\n{}\nstderr:\n{}",
        stdout.text(),
        stderr.text()
    );
    Output {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

/// SIGKILL to every process left in the process group `group` (which we created).
fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
}

/// Width and height from a PNG's `IHDR` chunk, if `path` is a PNG.
fn png_size(path: &Path) -> Option<(u32, u32)> {
    let bytes = std::fs::read(path).ok()?;
    let signature_ok = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    if !signature_ok || bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    Some((be(16), be(20)))
}

#[tokio::test]
async fn a_share_link_opens_the_sandbox_app_in_chromium() {
    let Some(chromium) = optional_program(
        "CHROMIUM_BIN",
        "chromium",
        "a_share_link_opens_the_sandbox_app_in_chromium",
    ) else {
        return;
    };
    let stack = Stack::start().await;
    let id = stack.sandbox_id().to_owned();
    let token = token_for(&id, Some(vec![3000]), now() + 600);
    let url = format!(
        "http://{}:{}/html?access_token={token}",
        stack.host(3000),
        stack.envoy.port
    );
    let dir = tempfile::tempdir().unwrap();
    let screenshot = dir.path().join("page.png");

    let chromium_run = run_bounded(
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Everything to loopback: the preview hosts to Envoy, any other name fails to
                // resolve, and no proxy from the environment (http_proxy) is used.
                "--host-resolver-rules=MAP *.preview.test 127.0.0.1, MAP * ~NOTFOUND",
                "--no-proxy-server",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg(format!("--screenshot={}", screenshot.display()))
            .arg("--dump-dom")
            .arg(&url),
        CHROMIUM_TIMEOUT,
    )
    .await;
    let Output {
        status,
        stdout: dom,
        stderr,
    } = &chromium_run;
    assert!(status.success(), "chromium exited with {status}:\n{stderr}");

    // The app's page, not Daytona's interstitial, the sign-in redirect or a denial page.
    assert!(
        dom.contains("<title>Sandbox app</title>"),
        "not the app's page:\n{dom}\n{stderr}"
    );
    assert!(dom.contains(&format!("sandbox app for {id}")), "{dom}");
    assert!(!dom.contains("Preview URL warning"), "{dom}");
    let (width, height) = png_size(&screenshot).expect("a PNG screenshot");
    assert!(width > 0 && height > 0, "{width}x{height}");

    // Exactly one hop through the link-to-cookie redirect, and no loop: Envoy answered one 302
    // itself (the link), then the page and the favicon Chromium asks for after it, both
    // authenticated by the cookie alone.
    let received = stack.double.proxy_requests().await;
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/html", "/favicon.ico"], "{received:#?}");
    assert_eq!(stack.envoy.stat("http.public.downstream_rq_3xx").await, 1);
    assert_eq!(stack.envoy.stat("http.public.downstream_rq_2xx").await, 2);
    assert_eq!(stack.envoy.stat("http.public.downstream_rq_4xx").await, 0);
    assert_eq!(stack.envoy.stat("http.public.downstream_rq_5xx").await, 0);

    for request in &received {
        assert_eq!(request.method, "GET");
        assert!(!request.path.contains("access_token"), "{request:?}");
        assert_eq!(
            request.values("x-daytona-preview-token"),
            [stack.double.sandbox.token.as_str()],
            "{request:?}"
        );
        assert_eq!(
            request.values("x-daytona-skip-preview-warning"),
            ["true"],
            "{request:?}"
        );
        assert!(
            request
                .values("cookie")
                .iter()
                .all(|c| !c.contains("daytona_authz")),
            "{request:?}"
        );
        assert!(
            request
                .values("referer")
                .iter()
                .all(|r| !r.contains("access_token")),
            "{request:?}"
        );
        // A real browser: without the skip header Daytona would have shown its warning page.
        assert!(
            request
                .values("user-agent")
                .iter()
                .any(|ua| ua.contains("Mozilla") && ua.contains("HeadlessChrome")),
            "{request:?}"
        );
    }
    // The navigation itself, as Chromium sends it.
    assert_eq!(
        received[0].values("upgrade-insecure-requests"),
        ["1"],
        "{:?}",
        received[0]
    );
    // Our cookie was the only one, so no Cookie header reaches Daytona at all.
    assert!(received[0].values("cookie").is_empty(), "{:?}", received[0]);
}
