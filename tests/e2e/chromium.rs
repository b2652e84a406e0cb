//! A share link in a real browser: headless Chromium opens a minted link through Envoy and
//! daytona-authz and ends up on the sandbox app's page, not in a redirect loop and not on
//! Daytona's preview-warning page.
//!
//! Needs Chromium: `CHROMIUM_BIN`, else `chromium` on PATH (`scripts/install-debian chromium
//! chromium` installs it; `scripts/test` runs it first). Without one the test skips, unless `CI`
//! is set.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{
    AuthzOptions, Edge, EdgeCertificate, FrontProxy, Stack, StackOptions, TestCa, now,
    optional_program, token_for,
};

/// Chromium gets this long to load the page and print it before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished Chromium run printed.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
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
pub(crate) async fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
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
            .arg("--headless")
            // No proxy from the environment (http_proxy) is used, among the rest.
            .args(ISOLATED)
            // Everything to loopback: the preview hosts to Envoy, any other name fails to
            // resolve.
            .arg("--host-resolver-rules=MAP *.preview.test 127.0.0.1, MAP * ~NOTFOUND")
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

// --- isolation between sandboxes: what another page can do with the user's cookie -------------

/// The preview domain of the isolation tests. Chromium sends Fetch Metadata (`Sec-Fetch-*`) only
/// to hosts it considers trustworthy: HTTPS, or `localhost` and its subdomains over plain HTTP,
/// as here. Every `*.preview.localhost` is one site, as every preview host of a real deployment is.
const LOCAL_DOMAIN: &str = "preview.localhost";

fn local_host(sandbox_id: &str, port: u16) -> String {
    format!("{port}-{sandbox_id}.{LOCAL_DOMAIN}")
}

/// Runs headless Chromium on `url` until the page has been idle for a while (its fetches done),
/// then returns the DOM it ended on.
async fn dom_after_scripts(chromium: &Path, url: &str) -> String {
    // Virtual time waits for pending fetches; the page's own work is bounded by it.
    dump_dom(
        chromium,
        url,
        LOCAL_DOMAIN,
        &["--virtual-time-budget=10000".into()],
    )
    .await
}

/// Chromium's flags for a run that is the test's alone: no sandboxing of its own (it runs as
/// root here), no GPU, no QUIC, no first-run page, no calls home, no proxy.
pub(crate) const ISOLATED: &[&str] = &[
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
];

/// Headless Chromium on `url` with a fresh profile, no proxy, `*.{domain}` resolved to loopback
/// and every other name to nothing, plus `extra` flags; the DOM it ended on.
async fn dump_dom(chromium: &Path, url: &str, domain: &str, extra: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let run = run_bounded(
        Command::new(chromium)
            .arg("--headless")
            .args(ISOLATED)
            .arg("--dump-dom")
            .arg(format!(
                "--host-resolver-rules=MAP *.{domain} 127.0.0.1, MAP * ~NOTFOUND"
            ))
            .args(extra)
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg(url),
        CHROMIUM_TIMEOUT,
    )
    .await;
    assert!(
        run.status.success(),
        "chromium exited with {}:\n{}",
        run.status,
        run.stderr
    );
    run.stdout
}

/// A hostile page: it tries to read `victim` (a URL of sandbox A, where the browser holds the
/// user's cookie) with `fetch` directly, through a redirect of its own origin (`bounce`, if
/// any), and with `<script src>` / `<img>`; it reads `own` (a URL of its own) as a control.
/// It writes what it could read into `<pre id="out">` as JSON.
pub(crate) fn hostile_page(victim: &str, bounce: Option<&str>, own: &str) -> String {
    let bounce = bounce.map_or("null".to_owned(), |b| format!("{b:?}"));
    format!(
        r#"<!DOCTYPE html><html><head><title>hostile</title></head><body>
<pre id="out">pending</pre>
<script src="{victim}?via=script"></script>
<img src="{victim}?via=img">
<script>
const victim = {victim:?}, bounce = {bounce}, own = {own:?};
async function attempt(url) {{
  try {{
    const r = await fetch(url, {{ credentials: "include" }});
    return "READ " + r.status + " " + (await r.text()).slice(0, 300);
  }} catch (e) {{
    return "BLOCKED";
  }}
}}
(async () => {{
  const out = {{}};
  out.own = await attempt(own);
  out.direct = await attempt(victim + "?via=fetch");
  if (bounce) out.redirect = await attempt(bounce + encodeURIComponent(victim + "?via=redirect"));
  try {{
    await fetch(victim + "?via=no-cors", {{ mode: "no-cors", credentials: "include" }});
  }} catch (e) {{}}
  document.getElementById("out").textContent = JSON.stringify(out);
}})();
</script></body></html>"#
    )
}

/// What the hostile page wrote, parsed.
fn page_results(dom: &str) -> serde_json::Value {
    let start = dom.find("<pre id=\"out\">").expect("the page's output") + 14;
    let end = start + dom[start..].find("</pre>").expect("the end of the output");
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the page did not finish ({e}): {text}\n{dom}"))
}

/// Every request sandbox `id`'s app received that the hostile page made (`via=` in the path).
pub(crate) async fn stolen(stack: &Stack, id: &str) -> Vec<String> {
    stack
        .double
        .proxy_requests()
        .await
        .into_iter()
        .filter(|r| r.host.contains(id) && r.path.contains("via="))
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.headers))
        .collect()
}

async fn local_stack() -> Stack {
    Stack::start_with(AuthzOptions::args(&["--preview-domain", LOCAL_DOMAIN])).await
}

/// The user opens a share link of sandbox A (A's cookie is set), and A's own page sends the
/// browser on to `next` (a top-level navigation, as a link in A's app would).
fn through_a_share_link(stack: &Stack, a: &str, next: &str) -> String {
    let token = token_for(a, Some(vec![3000]), now() + 600);
    format!(
        "http://{}:{}/redirect?to={}&access_token={token}",
        local_host(a, 3000),
        stack.envoy.port,
        urlencode(next)
    )
}

pub(crate) fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn a_sibling_sandboxs_page_cannot_read_another_sandbox_with_the_users_cookie() {
    let Some(chromium) = optional_program(
        "CHROMIUM_BIN",
        "chromium",
        "a_sibling_sandboxs_page_cannot_read_another_sandbox_with_the_users_cookie",
    ) else {
        return;
    };
    let stack = local_stack().await;
    let a = stack.sandbox_id().to_owned();
    let b = stack.double.create_sandbox().await.id;
    let port = stack.envoy.port;
    let victim = format!("http://{}:{port}/secret", local_host(&a, 3000));
    let b_origin = format!("http://{}:{port}", local_host(&b, 3000));
    // B's page, opened with B's own share link (the user may open both sandboxes).
    let page = hostile_page(
        &victim,
        Some(&format!("{b_origin}/redirect?to=")),
        &format!("{b_origin}/own"),
    );
    let b_token = token_for(&b, Some(vec![3000]), now() + 600);
    let b_link = format!(
        "{b_origin}/html-from-query?html={}&access_token={b_token}",
        urlencode(&page)
    );
    let dom = dom_after_scripts(&chromium, &through_a_share_link(&stack, &a, &b_link)).await;
    let results = page_results(&dom);

    // The control: B's page reads B itself with B's cookie.
    assert!(
        results["own"].as_str().unwrap().starts_with("READ 200"),
        "{results}"
    );
    // Neither directly (Origin: B) nor after B's own redirect (Origin: null).
    assert_eq!(results["direct"], "BLOCKED", "{results}");
    assert_eq!(results["redirect"], "BLOCKED", "{results}");
    // And no request of B's page, `<script>`, `<img>` and no-cors fetch included, ever reached
    // A's app: each was refused at the edge.
    assert_eq!(stolen(&stack, &a).await, Vec::<String>::new());
    // The user's own navigation into A worked (the share link, then A's page).
    assert!(
        stack
            .double
            .proxy_requests()
            .await
            .iter()
            .any(|r| r.host.contains(&a) && r.path.starts_with("/redirect")),
        "A's page was never opened"
    );
}

#[tokio::test]
async fn a_same_site_page_outside_the_sandboxes_cannot_read_one_with_the_users_cookie() {
    let Some(chromium) = optional_program(
        "CHROMIUM_BIN",
        "chromium",
        "a_same_site_page_outside_the_sandboxes_cannot_read_one_with_the_users_cookie",
    ) else {
        return;
    };
    let stack = local_stack().await;
    let a = stack.sandbox_id().to_owned();
    let victim = format!(
        "http://{}:{}/secret",
        local_host(&a, 3000),
        stack.envoy.port
    );
    // `evil.preview.localhost`: same site as every preview host, but no sandbox of ours.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil = format!(
        "http://evil.{LOCAL_DOMAIN}:{}",
        listener.local_addr().unwrap().port()
    );
    let page = hostile_page(&victim, None, &format!("{evil}/"));
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let page = page.clone();
                async move { axum::response::Html(page) }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });

    let dom = dom_after_scripts(&chromium, &through_a_share_link(&stack, &a, &evil)).await;
    server.abort();
    let results = page_results(&dom);
    assert!(
        results["own"].as_str().unwrap().starts_with("READ 200"),
        "{results}"
    );
    assert_eq!(results["direct"], "BLOCKED", "{results}");
    assert_eq!(stolen(&stack, &a).await, Vec::<String>::new());
}

/// Where the `__Host-` cookie test reaches the edge from.
enum HttpsEdge {
    /// envoy-tls.yaml: Envoy ends TLS.
    Envoy,
    /// envoy-behind-proxy.yaml behind a TLS-ending proxy (another Envoy, as a load balancer).
    ProxyInFront,
}

/// The SPKI hash Chromium's `--ignore-certificate-errors-spki-list` takes: Chromium then trusts
/// the edge certificate with this key (and no other), as if the test CA were installed.
pub(crate) fn spki_hash(key_pem: &str) -> String {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;
    use sha2::Digest as _;
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let digest = sha2::Sha256::digest(key.subject_public_key_info());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Opens `url` in headless Chromium, trusting the certificate whose key hashes to `spki`; the
/// DOM it ended on.
async fn chromium_dom(chromium: &Path, url: &str, spki: &str) -> String {
    let trust = format!("--ignore-certificate-errors-spki-list={spki}");
    dump_dom(chromium, url, "preview.test", &[trust]).await
}

/// SECURITY.md recommends `--cookie-name __Host-daytona_authz` over https. Browsers keep such a
/// cookie only if it is `Secure`, has `Path=/` and no `Domain`, and was set over https: a share
/// link then opens the app only if daytona-authz knew the edge was https and said `Secure`.
async fn a_host_cookie_share_link_opens_the_app_over(edge: HttpsEdge, test: &str) {
    let Some(chromium) = optional_program("CHROMIUM_BIN", "chromium", test) else {
        return;
    };
    let ca = TestCa::new("edge test CA");
    let (cert, key) = ca.leaf(&["*.preview.test"]);
    let certificate = EdgeCertificate::new(&cert, &key);
    let authz = AuthzOptions::args(&["--cookie-name", "__Host-daytona_authz"]);
    let (stack, front) = match edge {
        HttpsEdge::Envoy => {
            let options = StackOptions {
                authz,
                edge: Edge::Tls(certificate.dir()),
                ..Default::default()
            };
            (Stack::start_with(options).await, None)
        }
        HttpsEdge::ProxyInFront => {
            let options = StackOptions {
                authz,
                edge: Edge::BehindProxy,
                ..Default::default()
            };
            let stack = Stack::start_with(options).await;
            let front = FrontProxy::start(stack.envoy.port, &certificate).await;
            (stack, Some(front))
        }
    };
    let port = front.as_ref().map_or(stack.envoy.port, |f| f.port);
    let id = stack.sandbox_id().to_owned();
    let token = token_for(&id, Some(vec![3000]), now() + 600);
    let host = stack.host(3000);
    let spki = spki_hash(&key);

    let url = format!("https://{host}:{port}/html?access_token={token}");
    let dom = chromium_dom(&chromium, &url, &spki).await;
    assert!(
        dom.contains("<title>Sandbox app</title>"),
        "not the app:\n{dom}"
    );
    // The page came by the cookie alone, after the link's redirect.
    let received = stack.double.proxy_requests().await;
    assert_eq!(received[0].path, "/html", "{received:#?}");

    // Control: the same link over plain HTTP (straight to the edge Envoy, where it listens in
    // plain HTTP) gets a cookie without Secure, which Chromium refuses for a `__Host-` name:
    // the page after the redirect is the 401, not the app.
    if front.is_some() {
        let url = format!(
            "http://{host}:{}/html?access_token={token}",
            stack.envoy.port
        );
        let dom = chromium_dom(&chromium, &url, &spki).await;
        assert!(!dom.contains("<title>Sandbox app</title>"), "{dom}");
        assert_eq!(stack.double.proxy_requests().await.len(), received.len());
    }
}

#[tokio::test]
async fn a_host_cookie_share_link_opens_the_app_over_envoy_ended_tls() {
    a_host_cookie_share_link_opens_the_app_over(
        HttpsEdge::Envoy,
        "a_host_cookie_share_link_opens_the_app_over_envoy_ended_tls",
    )
    .await;
}

#[tokio::test]
async fn a_host_cookie_share_link_opens_the_app_behind_a_tls_ending_proxy() {
    a_host_cookie_share_link_opens_the_app_over(
        HttpsEdge::ProxyInFront,
        "a_host_cookie_share_link_opens_the_app_behind_a_tls_ending_proxy",
    )
    .await;
}
