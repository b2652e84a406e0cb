//! Single sign-on end to end: envoy/envoy-sso.yaml as shipped (Envoy's OAuth2 filter before
//! ext_authz, Envoy ending TLS), a real certified OpenID provider (oidc-provider from npm, on
//! node: tests/sso/idp.mjs) with test users and groups, daytona-authz verifying the ID token the
//! filter keeps in its cookie, and headless Chromium (Debian's, driven by playwright-core:
//! tests/sso/drive.mjs) signing in, opening sandboxes and signing out.
//!
//! The user's ID token names no sandbox: it carries the person's `groups`, and daytona-authz's
//! `[[policy]]` rule opens a sandbox to the groups its `team` label names (the labels the Daytona
//! double reports, as Daytona's `GET /sandbox/{id}` does).
//!
//! Needs node with tests/sso/node_modules (`npm ci --prefix tests/sso`; scripts/test runs it)
//! and Chromium (`CHROMIUM_BIN`, else `chromium` on PATH). Without them the tests skip, unless CI
//! is set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    AuthzOptions, Edge, EdgeCertificate, Proc, Stack, StackOptions, TestCa, eventually, free_port,
    https_client, https_get, now, optional_program, remember_secret, repo_root, skip, token_for,
};

use crate::chromium::{ISOLATED, hostile_page, run_bounded, spki_hash, stolen, urlencode};

/// The OAuth2 client envoy-sso.yaml is for (its `client_id`, as shipped).
const CLIENT_ID: &str = "daytona-previews";
const CLIENT_SECRET: &str = "sso-test-client-secret-0123456789abcdef";
const HMAC_SECRET: &str = "sso-test-hmac-secret-0123456789abcdef-0123456789";
/// The provider's host name, for browsers (mapped to loopback) and Envoy's token requests.
const IDP_HOST: &str = "idp.test";
/// The preview domain of these tests; Envoy's session cookie is scoped to it.
const DOMAIN: &str = "preview.test";
const PASSWORD: &str = "any password";
/// The sandboxes: two of team A's, one of team B's; fixed ids, so the provider can name them.
const A1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const A2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const B1: &str = "bbbbbbbb-0000-4000-8000-000000000001";
/// The whole browser run (sign-in, five more pages, sign-out) gets this long.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);
/// The cookies Envoy's OAuth2 filter keeps its session in (its default names).
const SESSION_COOKIES: [&str; 5] = [
    "OauthHMAC",
    "OauthExpires",
    "BearerToken",
    "IdToken",
    "RefreshToken",
];

/// The teams' sandboxes.
const TEAM_A: [&str; 2] = [A1, A2];
const TEAM_B: [&str; 1] = [B1];

/// The test users and their groups: `alice` of team A, `bob` of team B. Their ID tokens name no
/// sandbox; [`RULES`] decides.
fn users() -> serde_json::Value {
    serde_json::json!({
        "alice": { "groups": ["team-a"] },
        "bob": { "groups": ["team-b"] },
    })
}

/// daytona-authz's config file: the preview domain and the rule that opens a team's sandboxes
/// to its members (README, "Policy").
const RULES: &str = r#"
[[policy]]
name = "team members open their team's sandboxes"
allow = 'token.groups.exists(g, g == sandbox.labels["team"])'
"#;

/// What the single-sign-on tests need, or `None` (skipped, said on stderr).
fn requirements(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = optional_program("CHROMIUM_BIN", "chromium", test)?;
    let node = optional_program("NODE_BIN", "node", test)?;
    let modules = repo_root().join("tests/sso/node_modules");
    if !modules.join("oidc-provider").is_dir() || !modules.join("playwright-core").is_dir() {
        skip(
            test,
            "tests/sso/node_modules is not installed",
            "npm ci --prefix tests/sso (scripts/test runs it)",
        );
        return None;
    }
    Some((chromium, node))
}

/// oidc-provider on 127.0.0.1, as tests/sso/idp.mjs runs it.
struct Idp {
    proc: Proc,
    port: u16,
    http: reqwest::Client,
}

impl Idp {
    async fn start(node: &Path) -> Idp {
        let mut proc = Proc::spawn(
            "oidc-provider",
            Command::new(node)
                .arg(repo_root().join("tests/sso/idp.mjs"))
                .current_dir(repo_root().join("tests/sso")),
        );
        let port = eventually("oidc-provider to listen", Duration::from_secs(30), || {
            if proc.has_exited() {
                panic!("oidc-provider exited:\n{}", proc.stderr());
            }
            let line = proc.stdout().lines().next().map(str::to_owned);
            async move {
                let line: serde_json::Value = serde_json::from_str(&line?).ok()?;
                line["port"].as_u64().and_then(|p| u16::try_from(p).ok())
            }
        })
        .await;
        Idp {
            proc,
            port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn origin(&self) -> String {
        format!("http://{IDP_HOST}:{}", self.port)
    }

    /// Registers the client (its callback on Envoy's `edge_port`, signing out back to
    /// `post_logout`) and the users; tokens live `ttl` seconds.
    async fn configure(&self, edge_port: u16, post_logout: &[String], ttl: u64) {
        let settings = serde_json::json!({
            "host": IDP_HOST,
            "client": {
                "id": CLIENT_ID,
                "secret": CLIENT_SECRET,
                "redirect_uri": format!("https://sso.{DOMAIN}:{edge_port}/_daytona_authz/sso/callback"),
                "post_logout_redirect_uris": post_logout,
            },
            "users": users(),
            "ttl": { "access_token": ttl, "id_token": ttl },
        });
        let response = self
            .http
            .post(format!("http://127.0.0.1:{}/_test/configure", self.port))
            .json(&settings)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "configure: {status} {body}");
    }

    /// How many code and refresh-token grants, sign-outs and logins the provider answered.
    async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("http://127.0.0.1:{}/_test/stats", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The edits that point envoy-sso.yaml, as shipped, at the test's provider (plain HTTP on
/// loopback) and preview domain, and add the scopes that carry `groups` and `sandbox_id`.
fn envoy_edits(idp_port: u16) -> Vec<(String, String)> {
    let idp = format!("http://{IDP_HOST}:{idp_port}");
    let shipped = std::fs::read_to_string(repo_root().join("envoy/envoy-sso.yaml")).unwrap();
    // The provider's TLS block goes: the test's provider speaks plain HTTP.
    let start = shipped
        .find("    # --- identity provider TLS\n")
        .expect("the identity provider's TLS block");
    let end_marker = "    # --- end of identity provider TLS\n";
    let end = shipped.find(end_marker).expect("its end") + end_marker.len();
    let edit = |from: &str, to: String| (from.to_owned(), to);
    vec![
        edit(
            "uri: https://login.example.com/oauth2/token",
            format!("uri: {idp}/token"),
        ),
        edit(
            "authorization_endpoint: https://login.example.com/oauth2/authorize",
            // prompt=consent: oidc-provider grants offline_access (refresh tokens) only then.
            format!("authorization_endpoint: {idp}/auth?prompt=consent"),
        ),
        edit(
            "end_session_endpoint: https://login.example.com/oauth2/logout",
            format!("end_session_endpoint: {idp}/session/end"),
        ),
        // The listener's port (free a moment ago) is part of the one callback URL.
        edit(
            "redirect_uri: https://sso.preview.example.com/_daytona_authz/sso/callback",
            format!(
                "redirect_uri: https://sso.{DOMAIN}:%DOWNSTREAM_LOCAL_PORT%/_daytona_authz/sso/callback"
            ),
        ),
        edit(
            "auth_scopes: [openid, email, profile, offline_access]",
            "auth_scopes: [openid, email, profile, offline_access, groups, sandboxes]".into(),
        ),
        edit(
            "cookie_domain: preview.example.com",
            format!("cookie_domain: {DOMAIN}"),
        ),
        edit(
            "socket_address: { address: login.example.com, port_value: 443 }",
            format!("socket_address: {{ address: 127.0.0.1, port_value: {idp_port} }}"),
        ),
        edit(&shipped[start..end], String::new()),
    ]
}

/// The stack of envoy-sso.yaml, daytona-authz verifying the provider's ID tokens, and the
/// sandboxes A1, A2 (team A) and B1 (team B) besides the double's own.
struct SsoStack {
    stack: Stack,
    idp: Idp,
    ca: TestCa,
    spki: String,
    port: u16,
    _certificate: EdgeCertificate,
    _oauth: tempfile::TempDir,
}

impl SsoStack {
    async fn start(node: &Path, ttl: u64) -> SsoStack {
        let idp = Idp::start(node).await;
        let port = free_port();
        let post_logout: Vec<String> = [A1, A2]
            .iter()
            .map(|id| format!("https://3000-{id}.{DOMAIN}:{port}/"))
            .collect();
        // Configured before daytona-authz starts: it is ready once it holds the provider's keys.
        idp.configure(port, &post_logout, ttl).await;

        let ca = TestCa::new("single sign-on edge CA");
        let (cert, key) = ca.leaf(&["*.preview.test"]);
        let certificate = EdgeCertificate::new(&cert, &key);
        let oauth = tempfile::tempdir().unwrap();
        for (file, secret) in [
            ("client-secret", CLIENT_SECRET),
            ("hmac-secret", HMAC_SECRET),
        ] {
            remember_secret(secret);
            std::fs::write(oauth.path().join(file), secret).unwrap();
        }
        let jwks = format!("http://127.0.0.1:{}/jwks", idp.port);
        let config = oauth.path().join("daytona-authz.toml");
        std::fs::write(&config, format!("preview-domain = \"{DOMAIN}\"\n{RULES}")).unwrap();
        let stack = Stack::start_with(StackOptions {
            authz: AuthzOptions::args(&[
                "--config",
                config.to_str().unwrap(),
                "--jwks-url",
                &jwks,
                "--sso-token-cookie",
                "IdToken",
                "--sso-audience",
                CLIENT_ID,
            ]),
            edge: Edge::Sso {
                certificate: certificate.dir(),
                oauth: oauth.path().to_owned(),
                port,
            },
            envoy_edits: envoy_edits(idp.port),
            // As README "Single sign-on" says to run it: the filter logs a token cookie it
            // cannot decrypt (a forged one, below) whole, at level error.
            envoy_args: vec!["--component-log-level".into(), "oauth2:critical".into()],
            ..Default::default()
        })
        .await;
        for (team, ids) in [("team-a", &TEAM_A[..]), ("team-b", &TEAM_B[..])] {
            for id in ids {
                stack
                    .double
                    .create_sandbox_with_id_and_labels(id, &[("team", team)])
                    .await;
            }
        }
        SsoStack {
            stack,
            idp,
            ca,
            spki: spki_hash(&key),
            port,
            _certificate: certificate,
            _oauth: oauth,
        }
    }

    fn host(&self, id: &str) -> String {
        format!("3000-{id}.{DOMAIN}")
    }

    fn url(&self, id: &str, path: &str) -> String {
        format!("https://{}:{}{path}", self.host(id), self.port)
    }

    fn client(&self, id: &str) -> reqwest::Client {
        https_client(&self.ca.pem(), &self.host(id), self.port)
    }

    /// Runs tests/sso/drive.mjs on `scenario` (plus the browser's settings); what it saw.
    async fn drive(
        &self,
        chromium: &Path,
        node: &Path,
        scenario: serde_json::Value,
    ) -> serde_json::Value {
        let mut scenario = scenario;
        scenario["chromium"] = chromium.display().to_string().into();
        scenario["idp"] = self.idp.origin().into();
        let mut args: Vec<String> = ISOLATED.iter().map(|flag| (*flag).to_owned()).collect();
        args.extend([
            // The preview hosts and the provider to loopback; every other name to nothing.
            format!(
                "--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1, MAP {IDP_HOST} 127.0.0.1, MAP * ~NOTFOUND"
            ),
            // The edge certificate, as if the test CA were installed.
            format!("--ignore-certificate-errors-spki-list={}", self.spki),
        ]);
        scenario["args"] = args.into();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scenario.json");
        std::fs::write(&file, scenario.to_string()).unwrap();
        let run = run_bounded(
            Command::new(node)
                .arg(repo_root().join("tests/sso/drive.mjs"))
                .arg(&file)
                .current_dir(repo_root().join("tests/sso")),
            BROWSER_TIMEOUT,
        )
        .await;
        assert!(
            run.status.success(),
            "the browser driver exited with {}:\n{}\n{}\nprovider:\n{}",
            run.status,
            run.stdout,
            run.stderr,
            self.idp.proc.stderr()
        );
        serde_json::from_str(run.stdout.trim())
            .unwrap_or_else(|e| panic!("the driver's output is not JSON ({e}):\n{}", run.stdout))
    }
}

fn is_app(page: &serde_json::Value) -> bool {
    page["title"] == "Sandbox app"
}

#[tokio::test]
async fn a_person_signs_in_once_for_the_teams_sandboxes_and_signs_out() {
    const TEST: &str = "a_person_signs_in_once_for_the_teams_sandboxes_and_signs_out";
    let Some((chromium, node)) = requirements(TEST) else {
        return;
    };
    let sso = SsoStack::start(&node, 600).await;
    let shared_id = sso.stack.sandbox_id().to_owned();
    let link = token_for(&shared_id, Some(vec![3000]), now() + 600);
    let victim = sso.url(A1, "/secret");
    let own = sso.url(A2, "/own");
    let hostile = hostile_page(&victim, Some(&sso.url(A2, "/redirect?to=")), &own);
    let seen = sso
        .drive(
            &chromium,
            &node,
            serde_json::json!({
                "user": "alice",
                "password": PASSWORD,
                "a1": sso.url(A1, "/html"),
                "a2": sso.url(A2, "/html"),
                "other": sso.url(B1, "/html"),
                "shared": sso.url(&shared_id, &format!("/html?access_token={link}")),
                "hostile": sso.url(A2, &format!("/html-from-query?html={}", urlencode(&hostile))),
                "sign_out": sso.url(A2, "/_daytona_authz/sso/sign-out"),
            }),
        )
        .await;
    let report = serde_json::to_string_pretty(&seen).unwrap();

    // 1. Team A's first sandbox: the provider's login form, then the app.
    assert_eq!(seen["first"]["login_form"], true, "{report}");
    assert!(
        seen["first"]["idp"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("/auth"),
        "{report}"
    );
    assert!(is_app(&seen["first"]["signed_in"]), "{report}");
    assert_eq!(
        seen["first"]["signed_in"]["url"],
        sso.url(A1, "/html"),
        "{report}"
    );
    // The session: the filter's cookies, for the whole preview domain, HttpOnly, Secure, Lax.
    let cookies = seen["cookies"].as_array().unwrap();
    for name in SESSION_COOKIES {
        let cookie = cookies
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} cookie: {report}"));
        assert_eq!(cookie["domain"], format!(".{DOMAIN}"), "{cookie}");
        assert_eq!(cookie["secure"], true, "{cookie}");
        assert_eq!(cookie["httpOnly"], true, "{cookie}");
        assert_eq!(cookie["sameSite"], "Lax", "{cookie}");
    }

    // 2. Team A's second sandbox: straight to the app, the provider never asked.
    assert!(is_app(&seen["second"]), "{report}");
    assert_eq!(seen["second"]["idp"], serde_json::json!([]), "{report}");

    // 2b. A share link while signed in: passed by the filter, the app.
    assert!(is_app(&seen["shared_signed_in"]), "{report}");
    assert_eq!(
        seen["shared_signed_in"]["idp"],
        serde_json::json!([]),
        "{report}"
    );

    // 3. Team B's sandbox: the 403 page, no provider either.
    assert_eq!(seen["other"]["status"], 403, "{report}");
    assert!(!is_app(&seen["other"]), "{report}");
    assert_eq!(seen["other"]["idp"], serde_json::json!([]), "{report}");
    // Refused by the rule (the ID token names no sandbox), not for naming another one.
    sso.stack
        .authz
        .proc
        .logged(
            "the policy's denial of team B's sandbox",
            &["no policy rule allows this token here", B1],
        )
        .await;

    // 4. A page of A2 cannot read A1 with the session (it reads its own sandbox), and none of
    //    its requests (fetch, redirect, <script>, <img>, no-cors) reached A1's app.
    let results: serde_json::Value = serde_json::from_str(
        seen["hostile_results"]
            .as_str()
            .expect("the page's results"),
    )
    .unwrap();
    assert!(
        results["own"].as_str().unwrap().starts_with("READ 200"),
        "{results}"
    );
    assert_eq!(results["direct"], "BLOCKED", "{results}");
    assert_eq!(results["redirect"], "BLOCKED", "{results}");
    assert_eq!(stolen(&sso.stack, A1).await, Vec::<String>::new());

    // 5. A share link beside single sign-on, in a browser without a session: the app, and the
    //    provider never asked.
    assert!(is_app(&seen["shared"]), "{report}");
    assert_eq!(seen["shared"]["idp"], serde_json::json!([]), "{report}");
    // And on that page a fetch without the session (nor the link's cookie) gets 401 from the
    // edge: Chromium's own Fetch Metadata, no redirect to the provider.
    assert_eq!(seen["fetch_without_session"]["status"], 401, "{report}");
    assert_eq!(
        seen["fetch_without_session"]["redirected"], false,
        "{report}"
    );

    // One sign-in (one code exchanged) for all of it.
    let stats = sso.idp.stats().await;
    assert_eq!(stats["authorization_code"], 1, "{stats}");

    // 6. Sign-out: the provider's end-session page, the session cookies gone, and the team's
    //    sandbox asks for a login again.
    let sign_out_pages: Vec<&str> = seen["sign_out"]["idp"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        sign_out_pages.iter().any(|p| p.starts_with("/session/end")),
        "{report}"
    );
    for name in SESSION_COOKIES {
        assert!(
            !seen["cookies_after_sign_out"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == name),
            "{name} survived the sign-out: {report}"
        );
    }
    assert_eq!(seen["after_sign_out"]["login_form"], true, "{report}");
    assert_eq!(sso.idp.stats().await["end_session"], 1);

    // The sandbox apps never saw the session: no cookie of the filter's, no Authorization (the
    // browser sends none of its own; the filter forwards no Bearer, forward_bearer_token:
    // false), and neither the callback nor the sign-out path. (On a signed-in request Envoy
    // 1.40 drops OauthHMAC, OauthExpires and RefreshToken itself and hands on the decrypted
    // IdToken and BearerToken; on one it passes by, such as the share link above, it hands on
    // all of them, encrypted. daytona-authz removes them all.)
    let received = sso.stack.double.proxy_requests().await;
    assert!(received.len() >= 4, "{received:#?}");
    // Among them the signed-in pages of both team sandboxes, so the checks below cover requests
    // that carried the session.
    for id in TEAM_A {
        assert!(
            received
                .iter()
                .any(|r| r.host.contains(id) && r.path == "/html"),
            "{id}: {received:#?}"
        );
    }
    for request in &received {
        assert!(request.values("authorization").is_empty(), "{request:?}");
        for cookie in request.values("cookie") {
            for pair in cookie.split(';') {
                let name = pair.split('=').next().unwrap_or_default().trim();
                assert!(
                    !SESSION_COOKIES.contains(&name)
                        && !name.starts_with("OauthNonce")
                        && !name.starts_with("OauthCodeVerifier")
                        && !name.starts_with("CodeVerifier"),
                    "{request:?}"
                );
            }
        }
        assert!(!request.path.contains("_daytona_authz"), "{request:?}");
    }
}

#[tokio::test]
async fn without_a_session_only_a_navigation_goes_to_the_provider() {
    const TEST: &str = "without_a_session_only_a_navigation_goes_to_the_provider";
    let Some((_chromium, node)) = requirements(TEST) else {
        return;
    };
    let sso = SsoStack::start(&node, 600).await;
    let client = sso.client(A1);
    let host = sso.host(A1);
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        let host = host.clone();
        let port = sso.port;
        async move {
            https_get(&client, &host, port, "/data", headers)
                .await
                .unwrap()
        }
    };

    // A person's navigation: to the provider, authorization code flow with PKCE (S256), back
    // to the one callback URL.
    let reply = get(&[("sec-fetch-mode", "navigate"), ("accept", "text/html")]).await;
    assert_eq!(reply.status, 302, "{reply:?}");
    let location = url::Url::parse(reply.header("location").unwrap()).unwrap();
    assert_eq!(location.origin().ascii_serialization(), sso.idp.origin());
    let query: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], CLIENT_ID);
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(!query["code_challenge"].is_empty());
    assert_eq!(
        query["redirect_uri"],
        format!(
            "https://sso.{DOMAIN}:{}/_daytona_authz/sso/callback",
            sso.port
        )
    );

    // A script's fetch, a WebSocket upgrade, a program: 401, never a redirect.
    for headers in [
        &[
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-site", "same-origin"),
        ][..],
        &[("sec-fetch-mode", "no-cors")][..],
        &[
            ("sec-fetch-mode", "websocket"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ][..],
        &[][..],
    ] {
        let reply = https_get(&client, &host, sso.port, "/data", headers)
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{headers:?}: {reply:?}");
        assert!(reply.header("location").is_none(), "{headers:?}: {reply:?}");
    }

    // One of daytona-authz's own tokens: never the provider, daytona-authz decides.
    let token = token_for(A1, Some(vec![3000]), now() + 600);
    let bearer = format!("Bearer {token}");
    let reply = client
        .get(sso.url(A1, "/data"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let echoed: serde_json::Value = reply.json().await.unwrap();
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");
    let other = token_for(B1, Some(vec![3000]), now() + 600);
    let reply = client
        .get(sso.url(A1, "/data"))
        .header("authorization", format!("Bearer {other}"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403, "a token for another sandbox");
    // A share link opened in a browser: the link's cookie, no provider.
    let reply = https_get(
        &client,
        &host,
        sso.port,
        &format!("/page?access_token={token}"),
        &[("sec-fetch-mode", "navigate")],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 302, "{reply:?}");
    assert_eq!(reply.header("location"), Some("/page"));
    assert!(
        reply
            .header("set-cookie")
            .is_some_and(|c| c.starts_with("daytona_authz=")),
        "{reply:?}"
    );
    // A cookie of our name that a sandbox's page planted for the whole preview domain: the
    // filter lets the request by, daytona-authz refuses it (401) and clears it both ways,
    // host-only and domain-wide, so the next navigation goes to the provider, not to this 401
    // again on every sandbox.
    let reply = https_get(
        &client,
        &host,
        sso.port,
        "/page",
        &[
            ("sec-fetch-mode", "navigate"),
            ("accept", "text/html"),
            ("cookie", "daytona_authz=planted-by-another-sandbox"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    let cleared: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("daytona_authz=; Max-Age=0") && !c.contains("Domain=")),
        "{cleared:?}"
    );
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("daytona_authz=; Max-Age=0")
                && c.contains(&format!("Domain={DOMAIN}"))),
        "{cleared:?}"
    );
    // A forged session (an ID token of our own making in the cookie, no valid HMAC): the
    // filter sends the navigation to the provider; nothing reaches the app.
    let forged = format!("IdToken={token}; OauthHMAC=forged; OauthExpires=9999999999");
    let reply = client
        .get(sso.url(A1, "/forged"))
        .header("cookie", &forged)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 302);
    assert!(
        reply.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&sso.idp.origin())
    );
    assert_eq!(sso.idp.stats().await["authorization_code"], 0);
    let received = sso.stack.double.proxy_requests().await;
    assert!(
        received.iter().all(|r| r.path != "/forged"),
        "{received:#?}"
    );
}

#[tokio::test]
async fn the_session_is_renewed_with_the_refresh_token_without_the_provider_page() {
    const TEST: &str = "the_session_is_renewed_with_the_refresh_token_without_the_provider_page";
    let Some((chromium, node)) = requirements(TEST) else {
        return;
    };
    // Access and ID tokens live 3 s: the session runs out while the browser keeps reloading.
    let sso = SsoStack::start(&node, 3).await;
    let seen = sso
        .drive(
            &chromium,
            &node,
            serde_json::json!({
                "user": "alice",
                "password": PASSWORD,
                "a1": sso.url(A1, "/html"),
                "refresh_stats": format!("http://127.0.0.1:{}/_test/stats", sso.idp.port),
            }),
        )
        .await;
    let report = serde_json::to_string_pretty(&seen).unwrap();
    assert!(is_app(&seen["first"]["signed_in"]), "{report}");
    // Renewed by Envoy with the refresh token: the app, and no page of the provider on the way.
    assert!(is_app(&seen["renewed"]), "{report}");
    assert_eq!(seen["renewed"]["idp"], serde_json::json!([]), "{report}");
    for reload in seen["reloads"].as_array().unwrap() {
        assert_eq!(reload["title"], "Sandbox app", "{report}");
        assert_eq!(reload["idp"], serde_json::json!([]), "{report}");
    }
    let stats = sso.idp.stats().await;
    assert_eq!(stats["authorization_code"], 1, "{stats}");
    assert!(stats["refresh_token"].as_u64().unwrap() >= 1, "{stats}");
}
