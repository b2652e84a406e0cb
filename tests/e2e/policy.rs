//! `[[policy]]` rules through a real Envoy: tokens that name no sandbox (what single sign-on
//! gives) opened by the rules of the config file, on the labels the Daytona double reports for
//! each sandbox; and `check-config --explain` saying why.

use std::process::Command;

use support::{
    API_KEY, AuthzOptions, JWT_SECRET, PREVIEW_DOMAIN, Stack, bearer, host_for, now,
    remember_secret,
};

const RULES: &str = r#"
[[policy]]
name = "team members open their team's sandboxes"
allow = 'token.groups.exists(g, g == sandbox.labels["team"])'

[[policy]]
name = "platform admins open everything, port 22222 excepted"
allow = '"platform-admins" in token.groups && request.port != 22222'
"#;

/// A config file with the rules, and ports up to 30000 (so port 22222 reaches the policy).
fn config_file(dir: &tempfile::TempDir, rules: &str) -> String {
    let path = dir.path().join("daytona-authz.toml");
    std::fs::write(
        &path,
        format!("preview-domain = \"{PREVIEW_DOMAIN}\"\nport-range = \"3000-30000\"\n{rules}"),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// An HS256 token without `sandbox_id`, carrying `groups` (as an identity provider's would).
fn member_of(groups: &[&str]) -> String {
    let claims = serde_json::json!({
        "sub": format!("user-of-{}", groups.join("+")),
        "groups": groups,
        "exp": now() + 600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    remember_secret(&token);
    token
}

#[tokio::test]
async fn groups_open_their_teams_sandboxes_and_admins_all_but_port_22222() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, RULES);
    let stack = Stack::start_with(AuthzOptions::args(&["--config", &config, "--audit-log"])).await;
    let team_a = stack
        .double
        .create_sandbox_with_labels(&[("team", "team-a")])
        .await;
    let team_b = stack
        .double
        .create_sandbox_with_labels(&[("team", "team-b")])
        .await;
    let alice = bearer(&member_of(&["team-a", "staff"]));
    let admin = bearer(&member_of(&["platform-admins"]));

    // A team-a member opens the team-a sandbox (twice: the description is cached).
    for _ in 0..2 {
        let reply = stack
            .get(
                &host_for(&team_a.id, 3000),
                "/",
                &[("authorization", &alice)],
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let received = stack.double.proxy_requests().await;
    assert_eq!(
        received.last().unwrap().values("x-daytona-preview-token"),
        [team_a.token.as_str()]
    );
    // The description was fetched once and then answered from the cache.
    let metrics = stack.authz.metrics().await;
    for line in [
        "daytona_authz_sandbox_description_cache_misses_total 1",
        "daytona_authz_sandbox_description_cache_hits_total 1",
        "daytona_authz_sandbox_description_cache_entries 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    // The audit line says who and by which rule.
    stack
        .authz
        .proc
        .logged(
            "the audit line of the allow",
            &[
                r#""decision":"allow""#,
                r#""sub":"user-of-team-a+staff""#,
                r#""rule":"team members open their team's sandboxes""#,
            ],
        )
        .await;
    // ... but not team-b's: 403 policy_denied, and nothing asked of the preview-url API.
    let reply = stack
        .get(
            &host_for(&team_b.id, 3000),
            "/",
            &[("authorization", &alice)],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "policy_denied", "{}", reply.body);
    assert!(
        !reply.body.contains("members") && !reply.body.contains("team-"),
        "no rule is named to the user: {}",
        reply.body
    );
    assert_eq!(stack.double.preview_url_calls_for(&team_b.id).await, 0);
    let page = stack
        .get(
            &host_for(&team_b.id, 3000),
            "/",
            &[("authorization", &alice), ("accept", "text/html")],
        )
        .await;
    assert_eq!(page.status, 403);
    assert!(
        page.body.contains("<html") || page.body.contains("<!doctype"),
        "{}",
        page.body
    );

    // A platform admin opens both, but never port 22222; the log says which rule came closest.
    for sandbox in [&team_a, &team_b] {
        let reply = stack
            .get(
                &host_for(&sandbox.id, 3000),
                "/",
                &[("authorization", &admin)],
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = stack
        .get(
            &host_for(&team_a.id, 22222),
            "/",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "policy_denied");
    let line = stack
        .authz
        .proc
        .logged(
            "the policy denial",
            &["platform admins open everything", "1 of 2"],
        )
        .await;
    assert!(line.contains("closest"), "{line}");

    // A token naming no sandbox and in no group: 403; each sandbox was described once.
    let nobody = bearer(&member_of(&[]));
    let reply = stack
        .get(
            &host_for(&team_a.id, 3000),
            "/",
            &[("authorization", &nobody)],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(stack.double.sandbox_calls().await, 2);
    // A sandbox Daytona does not know: 404, as for any token.
    let unknown = "11111111-2222-4333-8444-555555555555";
    let reply = stack
        .get(&host_for(unknown, 3000), "/", &[("authorization", &admin)])
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    // A claim of an unexpected shape, one group as a string as some providers send it: a macro
    // over it is an error and `in` is no substring test, so both rules are false (403), and the
    // log quotes no claim.
    for groups in ["team-a-single-group", "platform-admins-readonly"] {
        let odd = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"groups": groups, "exp": now() + 600}),
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap();
        remember_secret(&odd);
        let reply = stack
            .get(
                &host_for(&team_a.id, 3000),
                "/",
                &[("authorization", &bearer(&odd))],
            )
            .await;
        assert_eq!(reply.status, 403, "{groups}: {}", reply.body);
    }
    assert!(!stack.authz.proc.stderr().contains("single-group"));
    assert!(!stack.authz.proc.stderr().contains("admins-readonly"));
    // Tokens naming sandboxes work as before.
    let reply = stack
        .get(
            &stack.host(3000),
            "/",
            &[("authorization", &bearer(&stack.token(None)))],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A rule on `request.path` sees the path Envoy normalised, and so does the app: an encoded
/// slash (`%2F`, `%5C`) gets Envoy's redirect to the decoded, normalised path (envoy.yaml's
/// `path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT`) before any Check, so
/// `/public/..%2Fadmin` can never pass for a `/public/` path and reach an app that decodes it
/// to `/admin`.
#[tokio::test]
async fn an_encoded_slash_cannot_carry_a_path_past_a_prefix_rule() {
    const PUBLIC: &str = r#"
[[policy]]
name = "staff read /public/"
allow = 'token.groups.exists(g, g == "staff") && request.path.startsWith("/public/")'
"#;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, PUBLIC);
    let stack = Stack::start_with(AuthzOptions::args(&["--config", &config])).await;
    let sandbox = stack
        .double
        .create_sandbox_with_labels(&[("team", "team-a")])
        .await;
    let host = host_for(&sandbox.id, 3000);
    let staff = bearer(&member_of(&["staff"]));
    let get = |path: &'static str| {
        let (stack, host, staff) = (&stack, &host, &staff);
        async move { stack.get(host, path, &[("authorization", staff)]).await }
    };
    let checks = || async {
        let metrics = support::parse_metrics(&stack.authz.metrics().await);
        metrics["daytona_authz_check_duration_seconds_count"]
    };

    // The rule as meant: /public/ opens, /admin does not.
    let reply = get("/public/page").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/public/page");
    let reply = get("/admin").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "policy_denied");

    // Encoded traversals: Envoy answers with a redirect to where they lead (the query kept as
    // sent), without asking daytona-authz; followed, that path is the rule's to refuse.
    let before = checks().await;
    for (target, location) in [
        ("/public/..%2Fadmin", "/admin"),
        ("/public/..%2fadmin?x=%2F&y=1", "/admin?x=%2F&y=1"),
        ("/public/..%5Cadmin", "/admin"),
        ("/public/%2e%2e%2Fadmin", "/admin"),
        ("/public%2F..%2F..%2Fadmin", "/admin"),
    ] {
        let reply = get(target).await;
        assert_eq!(reply.status, 307, "{target}: {}", reply.body);
        assert_eq!(reply.header("location"), Some(location), "{target}");
    }
    assert_eq!(checks().await, before, "no Check for a redirected path");
    assert_eq!(
        stack
            .envoy
            .stat("http.public.downstream_rq_redirected_with_normalized_path")
            .await,
        5
    );
    let reply = get("/admin?x=%2F&y=1").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["error"], "policy_denied");

    // The app saw only the one path the rule allowed.
    let paths: Vec<String> = stack
        .double
        .proxy_requests()
        .await
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/public/page"]);
}

fn check_config(args: &[&str], api_url: &str) -> std::process::Output {
    check_config_with_stdin(args, api_url, "")
}

/// `check-config` with `stdin` on its standard input.
fn check_config_with_stdin(args: &[&str], api_url: &str, stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_daytona-authz"))
        .arg("check-config")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DAYTONA_API_KEY", API_KEY)
        .env("DAYTONA_AUTHZ_JWT_SECRET", JWT_SECRET)
        .env("DAYTONA_API_URL", api_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run daytona-authz");
    // Written whole, then closed: the child reads standard input only with --token-file -.
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("daytona-authz's output")
}

#[tokio::test]
async fn check_config_explains_a_decision_and_names_a_broken_rule() {
    let double = support::Double::start().await;
    let team_a = double
        .create_sandbox_with_labels(&[("team", "team-a")])
        .await;
    let team_b = double
        .create_sandbox_with_labels(&[("team", "team-b")])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, RULES);
    let alice = member_of(&["team-a"]);
    let admin = member_of(&["platform-admins"]);
    let explain = |token: &str, sandbox: &str, port: &str| {
        let output = check_config(
            &[
                "--config",
                &config,
                "--explain",
                "--token",
                token,
                "--sandbox",
                sandbox,
                "--port",
                port,
            ],
            &double.api_url,
        );
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
        support::assert_no_secret("check-config --explain", &stdout);
        stdout
    };
    let out = explain(&alice, &team_a.id, "3000");
    assert!(out.contains("decision: allow"), "{out}");
    assert!(
        out.contains("allowed by: rule \"team members open their team's sandboxes\""),
        "{out}"
    );
    assert!(out.contains("team=team-a"), "{out}");
    let out = explain(&alice, &team_b.id, "3000");
    assert!(out.contains("decision: deny (403 policy_denied)"), "{out}");
    assert!(out.contains("closest: none"), "{out}");
    let out = explain(&admin, &team_b.id, "22222");
    assert!(out.contains("decision: deny (403 policy_denied)"), "{out}");
    assert!(
        out.contains("closest: \"platform admins open everything, port 22222 excepted\""),
        "{out}"
    );
    let out = explain(&admin, &team_b.id, "3000");
    assert!(out.contains("allowed by: rule \"platform admins"), "{out}");

    // The token from a file, or from standard input (`-`), keeps it out of `ps` and the
    // shell's history; the same decision. A trailing newline (`echo`'s) is not part of it.
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{alice}\n")).unwrap();
    let from = |source: &str, stdin: &str| {
        let args = [
            "--config",
            &config,
            "--explain",
            "--token-file",
            source,
            "--sandbox",
            &team_a.id,
            "--port",
            "3000",
        ];
        check_config_with_stdin(&args, &double.api_url, stdin)
    };
    for output in [
        from(file.to_str().unwrap(), ""),
        from("-", &format!("{alice}\n")),
    ] {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(stdout.contains("decision: allow"), "{stdout}");
        support::assert_no_secret("check-config --explain --token-file", &stdout);
    }
    // Not both; and an empty or missing file is a usage error (64) that quotes no token.
    let both = check_config(
        &[
            "--config",
            &config,
            "--explain",
            "--token",
            &alice,
            "--token-file",
            "-",
            "--sandbox",
            &team_a.id,
            "--port",
            "3000",
        ],
        &double.api_url,
    );
    assert_eq!(both.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    for (source, stdin, says) in [
        ("-", "", "--token-file: standard input is empty"),
        (
            "/nonexistent/token",
            "",
            "--token-file: cannot read /nonexistent/token",
        ),
    ] {
        let output = from(source, stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // The explanation never asked for a preview token.
    assert_eq!(double.api_calls().await, 0);

    // A broken rule: exit 64, naming the rule.
    let broken = config_file(
        &dir,
        "[[policy]]\nname = \"half written\"\nallow = 'token.groups.exists(g, '\n",
    );
    let output = check_config(&["--config", &broken], &double.api_url);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[[policy]] \"half written\": allow does not parse"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_reload_applies_new_rules_live_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let team_rule = RULES
        .split("\n[[policy]]\nname = \"platform")
        .next()
        .unwrap();
    let config = config_file(&dir, team_rule);
    let stack = Stack::start_with(AuthzOptions::args(&["--config", &config])).await;
    let sandbox = stack
        .double
        .create_sandbox_with_labels(&[("team", "team-b")])
        .await;
    let admin = bearer(&member_of(&["platform-admins"]));
    let host = host_for(&sandbox.id, 3000);
    let status = || async {
        stack
            .get(&host, "/", &[("authorization", &admin)])
            .await
            .status
    };
    assert_eq!(status().await, 403, "only the team rule so far");

    // A broken rule: the reload is refused, naming it, and the old rules keep serving.
    config_file(
        &dir,
        &format!("{team_rule}\n[[policy]]\nname = \"oops\"\nallow = 'token.groups.exists('\n"),
    );
    stack.authz.signal("HUP");
    stack
        .authz
        .proc
        .logged(
            "the refused reload",
            &["reload failed", "oops", "does not parse"],
        )
        .await;
    assert_eq!(status().await, 403);

    // The admins' rule added: applied without a restart.
    config_file(&dir, RULES);
    stack.authz.signal("HUP");
    stack
        .authz
        .proc
        .logged("the applied reload", &["reloaded", "[[policy]]"])
        .await;
    assert_eq!(status().await, 200);
}

/// Whoever can sign in can name any sandbox id, and each new one is a `GET /sandbox/{id}` on the
/// API key everyone's preview tokens share: a script walking made-up ids is stopped per person
/// (`--max-sandboxes-per-person`), before Daytona is asked, while what it opened keeps working
/// and other people are not affected.
/// A GET of `/` on port 3000 of sandbox `id` with `authorization`.
async fn open(stack: &Stack, id: &str, authorization: &str) -> support::Reply {
    stack
        .get(
            &host_for(id, 3000),
            "/",
            &[("authorization", authorization)],
        )
        .await
}

#[tokio::test]
async fn a_person_walking_sandbox_ids_is_stopped_before_daytona_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, RULES);
    let stack = Stack::start_with(AuthzOptions::args(&[
        "--config",
        &config,
        "--max-sandboxes-per-person",
        "2",
    ]))
    .await;
    let team_a = stack
        .double
        .create_sandbox_with_labels(&[("team", "team-a")])
        .await;
    let admin = bearer(&member_of(&["platform-admins"]));
    let reply = open(&stack, &team_a.id, &admin).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Real sandboxes do not count (the admin opened one, and opens a second below); made-up
    // ids do: the first two are asked about (404), the third is one too many.
    let walked = [
        "11111111-2222-4333-8444-555555555555",
        "66666666-7777-4888-9999-aaaaaaaaaaaa",
        "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff",
    ];
    let team_b = stack
        .double
        .create_sandbox_with_labels(&[("team", "team-b")])
        .await;
    let reply = open(&stack, &team_b.id, &admin).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for id in &walked[..2] {
        let reply = open(&stack, id, &admin).await;
        assert_eq!(reply.status, 404, "{}", reply.body);
    }
    let calls = stack.double.sandbox_calls().await;
    let reply = open(&stack, walked[2], &admin).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(
        reply.json()["error"],
        "too_many_sandboxes",
        "{}",
        reply.body
    );
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    // A made-up id asked again within the window is answered 404 without asking Daytona.
    let reply = open(&stack, walked[0], &admin).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(
        stack.double.sandbox_calls().await,
        calls,
        "Daytona was not asked"
    );
    // What this person opened keeps working; another person has their own bound.
    let reply = open(&stack, &team_a.id, &admin).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let alice = bearer(&member_of(&["team-a"]));
    let reply = open(&stack, &team_a.id, &alice).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
