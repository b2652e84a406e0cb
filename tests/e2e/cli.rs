//! The command line as users script against it: exit codes, one-line errors, help.

use std::process::{Command, Output};

const SECRET: &str = "cli-test-secret-0123456789abcdef-0123";

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_daytona-authz"));
    command.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run daytona-authz")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const GOOD_ENV: [(&str, &str); 3] = [
    ("DAYTONA_API_KEY", "key"),
    ("DAYTONA_AUTHZ_PREVIEW_DOMAIN", "preview.example.com"),
    ("DAYTONA_AUTHZ_JWT_SECRET", SECRET),
];

#[test]
fn a_missing_or_invalid_setting_exits_64_with_one_line() {
    // (extra flags, environment, what the message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], GOOD_ENV[..2].to_vec(), "--jwt-secret"),
        (vec![], vec![GOOD_ENV[0], GOOD_ENV[2]], "--preview-domain"),
        (vec![], GOOD_ENV[1..].to_vec(), "Daytona API key"),
        (
            vec!["--grpc-addr", "nowhere"],
            GOOD_ENV.to_vec(),
            "--grpc-addr",
        ),
        (
            vec!["--cache-ttl", "forever"],
            GOOD_ENV.to_vec(),
            "--cache-ttl",
        ),
        (vec!["--no-such-flag"], GOOD_ENV.to_vec(), "--no-such-flag"),
        (
            vec!["--daytona-api-key-file", "/nonexistent/key"],
            GOOD_ENV[1..].to_vec(),
            "/nonexistent/key",
        ),
    ];
    for (args, env, needle) in cases {
        let mut argv = vec!["serve"];
        argv.extend(&args);
        let output = run(&argv, &env);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("daytona-authz: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains(SECRET), "{err}");
    }
}

#[test]
fn env_vars_configure_serve_as_flags_do() {
    // Same bad value through the environment: named by its flag, still 64.
    let mut env = GOOD_ENV.to_vec();
    env.push(("DAYTONA_AUTHZ_CACHE_TTL", "0s"));
    let output = run(&["serve"], &env);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("--cache-ttl"));
}

#[test]
fn help_lists_every_flag_with_its_env_var_and_hides_secret_values() {
    let output = run(
        &["serve", "--help"],
        &[("DAYTONA_AUTHZ_JWT_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, env) in [
        ("--grpc-addr", "DAYTONA_AUTHZ_GRPC_ADDR"),
        ("--daytona-api-url", "DAYTONA_API_URL"),
        ("--daytona-api-key", "DAYTONA_API_KEY"),
        ("--preview-domain", "DAYTONA_AUTHZ_PREVIEW_DOMAIN"),
        ("--jwt-secret", "DAYTONA_AUTHZ_JWT_SECRET"),
        ("--jwt-issuer", "DAYTONA_AUTHZ_JWT_ISSUER"),
        ("--jwt-audience", "DAYTONA_AUTHZ_JWT_AUDIENCE"),
        ("--cache-ttl", "DAYTONA_AUTHZ_CACHE_TTL"),
        ("--cache-max-entries", "DAYTONA_AUTHZ_CACHE_MAX_ENTRIES"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
    assert!(!help.contains(SECRET), "--help shows a secret");
}

#[test]
fn mint_prints_a_share_link_and_expiry() {
    let id = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    let output = run(
        &[
            "mint",
            "--sandbox",
            id,
            "--port",
            "3000",
            "--ttl",
            "10m",
            "--base-url",
            "https://{port}-{id}.preview.example.com",
        ],
        &[("DAYTONA_AUTHZ_JWT_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with(&format!(
        "https://3000-{id}.preview.example.com/?access_token=ey"
    )));
    assert!(out.contains("expires: "));

    let output = run(
        &["mint", "--sandbox", id, "--ttl", "48h"],
        &[("DAYTONA_AUTHZ_JWT_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("--ttl"));

    // No --port: refused, rather than a token for every port of the sandbox.
    let output = run(
        &["mint", "--sandbox", id],
        &[("DAYTONA_AUTHZ_JWT_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("--any-port"),
        "{}",
        stderr(&output)
    );
    let output = run(
        &["mint", "--sandbox", id, "--any-port"],
        &[("DAYTONA_AUTHZ_JWT_SECRET", SECRET)],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("token: ey"));
}

#[test]
fn check_config_lists_every_problem_or_says_ok() {
    let output = run(
        &[
            "check-config",
            "--grpc-addr",
            "nowhere",
            "--cache-ttl",
            "0s",
            "--login-url",
            "ftp://x",
            "--jwt-secret-file",
            "/nonexistent/secret",
        ],
        &GOOD_ENV[..2],
    );
    assert_eq!(output.status.code(), Some(64));
    let err = stderr(&output);
    for needle in [
        "--grpc-addr",
        "--cache-ttl",
        "--login-url",
        "/nonexistent/secret",
    ] {
        assert!(err.contains(needle), "{needle} missing:\n{err}");
    }
    assert_eq!(err.lines().count(), 4, "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("daytona-authz: ")),
        "{err}"
    );

    let output = run(&["check-config"], &GOOD_ENV);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("configuration OK"));
}

#[test]
fn check_config_reads_a_config_file_that_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let file = dir.path().join("daytona-authz.toml");
    std::fs::write(
        &file,
        format!(
            "preview-domain = \"from-file.example.com\"\ndaytona-api-key = \"key\"\njwt-secret-file = \"{}\"\ncache-ttl = \"never\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let output = run(&["check-config", "--config", config], &[]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("--cache-ttl"));
    let output = run(
        &["check-config", "--config", config, "--cache-ttl", "2m"],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("from-file.example.com"));
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = run(&["healthcheck", "--http-addr", &addr], &[]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn an_unreachable_admin_api_exits_69() {
    let url = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        vec![
            "mint",
            "--admin-url",
            &url,
            "--sandbox",
            "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93",
            "--port",
            "3000",
        ],
        vec!["revoke", "--admin-url", &url, "--jti", "some-jti"],
    ] {
        let output = run(
            &args,
            &[(
                "DAYTONA_AUTHZ_ADMIN_TOKEN",
                "admin-token-0123456789abcdef-0123456789",
            )],
        );
        assert_eq!(
            output.status.code(),
            Some(69),
            "{args:?}: {}",
            stderr(&output)
        );
        let err = stderr(&output);
        assert!(
            err.starts_with("daytona-authz: cannot reach the admin API at "),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn serve_exits_by_kind_a_busy_port_71_an_unusable_revocation_store_73() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let free = || format!("127.0.0.1:{}", support::free_port());
    let db = dir.path().join("revocations.redb");
    let db = db.to_str().unwrap();
    let output = run(
        &[
            "serve",
            "--grpc-addr",
            &busy_addr,
            "--http-addr",
            &free(),
            "--revocation-db",
            db,
        ],
        &GOOD_ENV,
    );
    assert_eq!(output.status.code(), Some(71), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot listen on"),
        "{}",
        stderr(&output)
    );

    // A revocation store where no file can be made (a path under a regular file).
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let db = file.join("revocations.redb");
    let output = run(
        &[
            "serve",
            "--grpc-addr",
            &free(),
            "--http-addr",
            &free(),
            "--revocation-db",
            db.to_str().unwrap(),
        ],
        &GOOD_ENV,
    );
    assert_eq!(output.status.code(), Some(73), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("revocation store"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_config_reads_envoys_routes_and_names_the_one_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = dir.path().join("envoy.yaml");
    let shipped = std::fs::read_to_string(support::repo_root().join("envoy/envoy.yaml")).unwrap();
    let (from, to) = support::uncommented("envoy/envoy.yaml", "per-route examples");
    let examples = shipped.replace(&from, &to);
    let path = envoy.to_str().unwrap();

    std::fs::write(&envoy, &examples).unwrap();
    let output = run(&["check-config", "--envoy-config", path], &GOOD_ENV);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("route webhooks (")
            && stdout.contains("access preview-token-only, ports 8080"),
        "{stdout}"
    );
    assert!(stdout.contains("route partners ("), "{stdout}");

    // A port range that leaves out the partners' 8000-8099: refused, naming the virtual host.
    let output = run(
        &[
            "check-config",
            "--envoy-config",
            path,
            "--port-range",
            "3000-8050",
        ],
        &GOOD_ENV,
    );
    assert_eq!(output.status.code(), Some(64));
    let err = stderr(&output);
    assert!(
        err.contains("> partners") && err.contains("--port-range 3000-8050"),
        "{err}"
    );

    // A typo: refused by serve too, before it listens.
    std::fs::write(
        &envoy,
        examples.replace("daytona_authz.access", "daytona_authz.acess"),
    )
    .unwrap();
    let output = run(&["check-config", "--envoy-config", path], &GOOD_ENV);
    assert_eq!(output.status.code(), Some(64));
    let err = stderr(&output);
    assert!(
        err.contains("> webhooks") && err.contains("daytona_authz.acess"),
        "{err}"
    );
    let output = run(
        &[
            "serve",
            "--envoy-config",
            path,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &GOOD_ENV,
    );
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));

    // The shipped file (examples commented out) sets nothing.
    let output = run(
        &[
            "check-config",
            "--envoy-config",
            support::repo_root()
                .join("envoy/envoy.yaml")
                .to_str()
                .unwrap(),
        ],
        &GOOD_ENV,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("route "));
}
