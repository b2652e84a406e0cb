//! Command line, environment and an optional config file: parsed by clap (flags beat
//! environment variables, which beat the file, which beats the defaults), then validated as a
//! whole into [`ServeConfig`] before anything binds a socket. Problems are one line each and exit
//! code 64 (EX_USAGE); `check-config` lists every problem at once.
//!
//! `args` holds the flags, `file` the config file, `secrets` where each secret
//! comes from, `validate` the checks and the validated [`ServeConfig`].

mod args;
mod envoy;
mod file;
mod secrets;
mod validate;

pub use args::*;
pub use envoy::*;
pub use file::*;
pub use secrets::*;
pub use validate::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::introspection::UnknownBudget;
    use std::time::Duration;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigErrors> {
        let mut argv = vec!["daytona-authz", "serve"];
        argv.extend_from_slice(args);
        match parse_from(argv).expect("clap parses").command {
            Command::Serve(args) => args.validate(),
            _ => unreachable!(),
        }
    }

    fn first_error(args: &[&str]) -> String {
        serve(args).unwrap_err().0[0].to_string()
    }

    const GOOD: [&str; 6] = [
        "--daytona-api-key",
        "key",
        "--preview-domain",
        "Preview.Example.com.",
        "--jwt-secret",
        "0123456789abcdef0123456789abcdef",
    ];

    #[test]
    fn a_minimal_configuration_validates_with_defaults() {
        let config = serve(&GOOD).unwrap();
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:9192");
        assert_eq!(config.preview_domains, ["preview.example.com"]);
        assert_eq!(config.port_range, crate::authz::host::PortRange::DAYTONA);
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.daytona_api_timeout, Duration::from_secs(5));
        assert_eq!(config.ready_grace, Some(Duration::from_secs(30)));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.identity.max_token_lifetime, None);
        assert_eq!(config.negative_cache_ttl, Duration::from_secs(5));
        assert_eq!(config.max_ports_per_sandbox, 16);
        assert_eq!(config.port_window, Duration::from_secs(300));
        let uncached = serve(&[&GOOD[..], &["--negative-cache-ttl", "0s"]].concat()).unwrap();
        assert_eq!(uncached.negative_cache_ttl, Duration::ZERO);
        let capped = serve(&[&GOOD[..], &["--max-token-lifetime", "30d"]].concat()).unwrap();
        assert_eq!(
            capped.identity.max_token_lifetime,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            config.daytona_api_url.as_str(),
            "https://app.daytona.io/api"
        );
        assert!(config.secrets.admin_token.is_none());
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: [(&[&str], &str); 20] = [
            (&["--grpc-addr", "localhost"], "--grpc-addr"),
            (&["--http-addr", "nowhere"], "--http-addr"),
            (&["--daytona-api-url", "ftp://x"], "--daytona-api-url"),
            (&["--cache-ttl", "0s"], "--cache-ttl"),
            (&["--cache-ttl", "soon"], "--cache-ttl"),
            (&["--daytona-api-timeout", "2h"], "--daytona-api-timeout"),
            (&["--cache-max-entries", "0"], "--cache-max-entries"),
            (&["--admin-token", "short"], "admin token"),
            (&["--jwt-secret-file", "/nonexistent"], "not both"),
            (&["--log-format", "xml"], "--log-format"),
            (
                &["--max-concurrent-api-calls", "0"],
                "--max-concurrent-api-calls",
            ),
            (&["--worker-threads", "0"], "--worker-threads"),
            (&["--worker-threads", "257"], "--worker-threads"),
            (&["--max-token-lifetime", "30s"], "--max-token-lifetime"),
            (&["--max-token-lifetime", "forever"], "--max-token-lifetime"),
            (&["--negative-cache-ttl", "1h"], "--negative-cache-ttl"),
            (&["--max-ports-per-sandbox", "0"], "--max-ports-per-sandbox"),
            (
                &["--max-ports-per-sandbox", "7001"],
                "--max-ports-per-sandbox",
            ),
            (&["--port-window", "0s"], "--port-window"),
            (&["--port-window", "2d"], "--port-window"),
        ];
        for (extra, needle) in cases {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(extra);
            let error = first_error(&args);
            assert!(error.contains(needle), "{extra:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = serve(&[
            "--grpc-addr",
            "x",
            "--cache-ttl",
            "0s",
            "--preview-domain",
            "a..b",
        ])
        .unwrap_err();
        let text = errors.to_string();
        for needle in [
            "--grpc-addr",
            "--cache-ttl",
            "--preview-domain",
            "Daytona API key",
            "--jwt-secret",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert_eq!(errors.0.len(), 5, "{text}");
    }

    #[test]
    fn missing_required_settings_are_named() {
        assert!(first_error(&GOOD[2..]).contains("Daytona API key"));
        assert!(first_error(&[&GOOD[..2], &GOOD[4..]].concat()).contains("--preview-domain"));
        assert!(first_error(&GOOD[..4]).contains("--jwt-secret"));
        let mut short = GOOD.to_vec();
        short[5] = "short";
        assert!(first_error(&short).contains("32 bytes"));
    }

    #[test]
    fn the_budget_of_never_seen_introspected_tokens_is_checked() {
        let introspection = [
            "--introspection-url",
            "http://127.0.0.1:1/introspect",
            "--introspection-client-id",
            "authz",
            "--introspection-client-secret",
            "secret",
        ];
        let with = |extra: &[&str]| serve(&[&GOOD[..], &introspection[..], extra].concat());
        let budget = |config: ServeConfig| config.identity.introspection.unwrap().unknown;
        assert_eq!(budget(with(&[]).unwrap()), UnknownBudget::default());
        assert_eq!(
            budget(
                with(&[
                    "--introspection-unknown-concurrency",
                    "4",
                    "--introspection-unknown-rate",
                    "0.5",
                    "--introspection-unknown-burst",
                    "10",
                ])
                .unwrap()
            ),
            UnknownBudget {
                concurrency: 4,
                rate: 0.5,
                burst: 10,
            }
        );
        for (extra, needle) in [
            (
                ["--introspection-unknown-concurrency", "0"],
                "--introspection-unknown-concurrency",
            ),
            (
                ["--introspection-unknown-concurrency", "33"],
                "--introspection-unknown-concurrency",
            ),
            (
                ["--introspection-unknown-rate", "0"],
                "--introspection-unknown-rate",
            ),
            (
                ["--introspection-unknown-rate", "NaN"],
                "--introspection-unknown-rate",
            ),
            (
                ["--introspection-unknown-burst", "0"],
                "--introspection-unknown-burst",
            ),
        ] {
            let errors = with(&extra).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{extra:?}: {errors}");
            assert!(
                errors.0[0].to_string().contains(needle),
                "{extra:?}: {errors}"
            );
        }
    }

    #[test]
    fn tracing_is_off_by_default_and_the_otlp_endpoint_is_checked() {
        assert_eq!(serve(&GOOD).unwrap().tracing, None);
        let with = |extra: &[&str]| serve(&[&GOOD[..], extra].concat());
        let on = with(&["--otlp-endpoint", "http://127.0.0.1:4317"])
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(on.endpoint.as_str(), "http://127.0.0.1:4317/");
        assert_eq!(on.service_name, "daytona-authz");
        let named = with(&[
            "--otlp-endpoint",
            "https://collector.example.com",
            "--otlp-service-name",
            "edge-authz",
        ])
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(named.endpoint.host_str(), Some("collector.example.com"));
        assert_eq!(named.service_name, "edge-authz");
        for (extra, says) in [
            (["--otlp-endpoint", "127.0.0.1:4317"], "not a URL"),
            (["--otlp-endpoint", "collector:4317"], "http:// or https://"),
            (
                ["--otlp-endpoint", "grpc://collector:4317"],
                "http:// or https://",
            ),
            (["--otlp-endpoint", "not a url"], "not a URL"),
            (
                ["--otlp-endpoint", "http://u:p@collector:4317"],
                "credentials",
            ),
            (
                ["--otlp-endpoint", "http://collector:4317/v1/traces"],
                "path",
            ),
            (["--otlp-endpoint", "http://collector:4317/?x=1"], "query"),
            (["--otlp-service-name", ""], "--otlp-service-name"),
        ] {
            let mut args = extra.to_vec();
            if extra[0] != "--otlp-endpoint" {
                args.extend(["--otlp-endpoint", "http://127.0.0.1:4317"]);
            }
            let errors = with(&args).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{extra:?}: {errors}");
            let error = errors.0[0].to_string();
            assert!(error.contains(says), "{extra:?}: {error}");
            assert!(error.contains("--otlp-"), "{extra:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
            assert!(!error.contains("u:p@"), "credentials echoed: {error}");
        }
    }

    #[test]
    fn domains_are_checked() {
        for bad in ["", "-x.com", "a..b", "a_b.com", "x.com/", "*.x.com"] {
            assert!(preview_domain(bad).is_err(), "{bad}");
        }
        assert_eq!(
            preview_domain("preview.localhost").unwrap(),
            "preview.localhost"
        );
    }

    #[test]
    fn several_preview_domains_and_a_port_range() {
        let mut args = GOOD.to_vec();
        args.extend_from_slice(&[
            "--preview-domain",
            "preview.example.org,Preview.Example.com",
            "--port-range",
            "80-65535",
        ]);
        let config = serve(&args).unwrap();
        assert_eq!(
            config.preview_domains,
            ["preview.example.com", "preview.example.org"],
            "lower-cased, duplicates dropped, in order"
        );
        assert_eq!(config.port_range.to_string(), "80-65535");
        for (extra, needle) in [
            (
                ["--preview-domain", "ok.example.com,bad_domain"],
                "--preview-domain",
            ),
            (["--port-range", "9999-3000"], "--port-range"),
            (["--port-range", "0-100"], "--port-range"),
            (["--port-range", "all"], "--port-range"),
        ] {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(&extra);
            let error = first_error(&args);
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
        let no_domain = ["--daytona-api-key", "key", "--jwt-secret", GOOD[5]];
        assert!(first_error(&no_domain).contains("missing --preview-domain"));
    }

    #[test]
    fn single_sign_on_settings_are_checked() {
        // Off by default, the OAuth2 filter's cookies still named for stripping.
        let config = serve(&GOOD).unwrap();
        assert_eq!(config.sso, crate::authz::sso::Sso::default());
        assert!(config.sso.is_filter_cookie("OauthHMAC"));
        for (extra, needle) in [
            (
                &["--sso-token-cookie", "IdToken"][..],
                "needs --sso-audience",
            ),
            (
                &["--sso-token-cookie", "bad name", "--sso-audience", "x"][..],
                "--sso-token-cookie",
            ),
            (&["--sso-cookie", "Id;Token"][..], "--sso-cookie"),
            (&["--sso-audience", " "][..], "--sso-audience"),
        ] {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(extra);
            let error = first_error(&args);
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
        let mut args = GOOD.to_vec();
        args.extend_from_slice(&[
            "--sso-token-cookie",
            "__Secure-Id",
            "--sso-audience",
            "daytona-previews",
            "--sso-cookie",
            "__Secure-Hmac,__Secure-Expires",
        ]);
        let sso = serve(&args).unwrap().sso;
        assert_eq!(sso.token_cookie.as_deref(), Some("__Secure-Id"));
        assert_eq!(sso.audience.as_deref(), Some("daytona-previews"));
        assert_eq!(sso.cookies, ["__Secure-Hmac", "__Secure-Expires"]);
        assert!(sso.is_filter_cookie("__Secure-Id") && !sso.is_filter_cookie("IdToken"));
    }

    #[test]
    fn browser_settings_are_checked() {
        for (extra, needle) in [
            (["--cookie-name", "bad name"], "--cookie-name"),
            (["--login-url", "javascript:alert(1)"], "--login-url"),
            (["--login-url", "http://login.example.com"], "https"),
            (["--jwt-previous-secret", "short"], "previous JWT secret"),
        ] {
            let mut args = GOOD.to_vec();
            args.extend_from_slice(&extra);
            let error = first_error(&args);
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
        let mut args = GOOD.to_vec();
        args.extend_from_slice(&[
            "--login-url",
            "https://login.example.com/in",
            "--disable-cors",
        ]);
        let config = serve(&args).unwrap();
        assert_eq!(config.cookie_name, "daytona_authz");
        assert!(config.disable_cors);
        assert_eq!(
            config.login_url.unwrap().as_str(),
            "https://login.example.com/in"
        );
    }

    #[test]
    fn a_config_file_sits_between_flags_and_defaults() {
        let dir = std::env::temp_dir().join(format!("daytona-authz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("daytona-authz.toml");
        std::fs::write(
            &file,
            "preview-domain = \"from-file.example.com\"\ncache_ttl = \"2m\"\ncache-max-entries = 7\ndisable-cors = true\ndaytona-api-key = \"k\"\njwt-secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let config = serve(&["--config", path, "--cache-ttl", "5s"]).unwrap();
        assert_eq!(config.preview_domains, ["from-file.example.com"]);
        assert_eq!(config.cache_ttl, Duration::from_secs(5), "the flag wins");
        assert_eq!(config.cache_max_entries, 7);
        assert!(config.disable_cors);

        std::fs::write(&file, "no-such-key = 1\n").unwrap();
        let error = parse_from(["daytona-authz", "serve", "--config", path]).unwrap_err();
        assert!(
            error.to_string().contains("unknown key \"no-such-key\""),
            "{error}"
        );
        std::fs::write(&file, "cache-ttl = [1]\n").unwrap();
        let error = parse_from(["daytona-authz", "serve", "--config", path]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cache-ttl takes one value, not an array"),
            "{error}"
        );
        // Repeatable flags take arrays; flags still replace the whole list.
        std::fs::write(
            &file,
            "preview-domain = [\"preview.example.com\", \"preview.example.org\"]\n\
             upstream-domain = [\"proxy.example.com\"]\nport-range = \"80-9999\"\n\
             daytona-api-key = \"k\"\njwt-secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let config = serve(&["--config", path]).unwrap();
        assert_eq!(
            config.preview_domains,
            ["preview.example.com", "preview.example.org"]
        );
        assert_eq!(config.upstream_domains, ["proxy.example.com"]);
        assert_eq!(config.port_range.to_string(), "80-9999");
        let config = serve(&["--config", path, "--preview-domain", "only.example.net"]).unwrap();
        assert_eq!(config.preview_domains, ["only.example.net"]);
        // A broken file's error gives the place, never the line: it may hold a secret.
        std::fs::write(&file, "preview-domain = \"x.example.com\"\njwt-secret = \"s3cr3t-value-0123456789abcdef-xyz\n").unwrap();
        let error = parse_from(["daytona-authz", "serve", "--config", path]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("is not TOML at line 2"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        std::fs::write(&file, "jwt-secret = \"s3cr3t-value-0123456789abcdef-xyz\"\njwt-secret = \"s3cr3t-value-0123456789abcdef-xyz\"\n").unwrap();
        let text = parse_from(["daytona-authz", "serve", "--config", path])
            .unwrap_err()
            .to_string();
        assert!(!text.contains("s3cr3t-value"), "{text}");
        std::fs::write(&file, "preview-domain = [[\"nested\"]]\n").unwrap();
        assert!(parse_from(["daytona-authz", "serve", "--config", path]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_file_is_read_and_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let config = serve(&[&GOOD[..], &["--ca-file", good.to_str().unwrap()]].concat()).unwrap();
        assert_eq!(config.trust.added(), 1);
        assert_eq!(config.trust.ca_file(), Some(good.as_path()));
        assert_eq!(serve(&GOOD).unwrap().trust.added(), 0);

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, says) in [
            (&empty, "holds no PEM certificate"),
            (&missing, "cannot read"),
        ] {
            let error = first_error(&[&GOOD[..], &["--ca-file", path.to_str().unwrap()]].concat());
            assert!(error.starts_with("--ca-file: "), "{error}");
            assert!(error.contains(says), "{error}");
        }
        let error = first_error(
            &[
                &GOOD[..],
                &["--redis-url", "rediss://:pw@127.0.0.1:6380/#insecure"],
            ]
            .concat(),
        );
        assert!(error.contains("#fragment"), "{error}");
        assert!(serve(&[&GOOD[..], &["--redis-url", "rediss://127.0.0.1:6380/"]].concat()).is_ok());
    }

    #[test]
    fn forwarded_claims_assertions_and_the_audit_log_are_checked() {
        let config = serve(&GOOD).unwrap();
        assert!(config.app_identity.forward_claims.is_empty());
        assert!(config.app_identity.assertion.is_none());
        assert!(!config.app_identity.audit_log);

        let config = serve(
            &[
                &GOOD[..],
                &[
                    "--forward-claim",
                    "email=X-User-Email,groups=X-User-Groups",
                    "--forward-claim",
                    "sub=x-user",
                    "--assertion",
                    "--audit-log",
                ],
            ]
            .concat(),
        )
        .unwrap();
        let headers: Vec<(&str, &str)> = config
            .app_identity
            .forward_claims
            .iter()
            .map(|f| (f.claim.as_str(), &*f.header))
            .collect();
        assert_eq!(
            headers,
            [
                ("email", "x-user-email"),
                ("groups", "x-user-groups"),
                ("sub", "x-user")
            ]
        );
        assert!(config.app_identity.audit_log);
        let assertion = config.app_identity.assertion.unwrap();
        assert_eq!(assertion.header, "x-daytona-authz-assertion");
        assert_eq!(assertion.ttl, Duration::from_secs(60));
        assert_eq!(assertion.key.algorithm(), "EdDSA");
        assert!(assertion.key_file.is_none());
        // Validated again (a reload), the generated key stays the same.
        let again = serve(&[&GOOD[..], &["--assertion"]].concat()).unwrap();
        assert_eq!(
            again.app_identity.assertion.unwrap().key.kid(),
            assertion.key.kid()
        );

        let cases: [(&[&str], &str); 10] = [
            (&["--forward-claim", "email"], "--forward-claim"),
            (&["--forward-claim", "email=x_user"], "--forward-claim"),
            (&["--forward-claim", "email=Authorization"], "reserved"),
            (&["--forward-claim", "email=x-daytona-user"], "reserved"),
            (&["--forward-claim", "email=x-envoy-user"], "reserved"),
            (
                &["--forward-claim", "email=x-user,name=X-User"],
                "two claims for the header x-user",
            ),
            (
                &[
                    "--forward-claim",
                    "email=x-caller",
                    "--assertion",
                    "--assertion-header",
                    "X-Caller",
                ],
                "is the --assertion-header",
            ),
            (&["--assertion-header", "x-caller"], "need --assertion"),
            (
                &[
                    "--assertion",
                    "--assertion-header",
                    "x-daytona-preview-token",
                ],
                "--assertion-header",
            ),
            (
                &["--assertion", "--assertion-ttl", "1h1s"],
                "--assertion-ttl",
            ),
        ];
        for (extra, needle) in cases {
            let error = first_error(&[&GOOD[..], extra].concat());
            assert!(error.contains(needle), "{extra:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("assertion.pem");
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&file, p256.serialize_pem()).unwrap();
        let path = file.to_str().unwrap();
        let config =
            serve(&[&GOOD[..], &["--assertion", "--assertion-key-file", path]].concat()).unwrap();
        let assertion = config.app_identity.assertion.unwrap();
        assert_eq!(assertion.key.algorithm(), "ES256");
        assert_eq!(assertion.key_file.as_deref(), Some(file.as_path()));
        assert!(!format!("{assertion:?}").contains("PRIVATE"));
        std::fs::write(&file, "not a key").unwrap();
        let error =
            first_error(&[&GOOD[..], &["--assertion", "--assertion-key-file", path]].concat());
        assert!(error.starts_with("--assertion-key-file: "), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = first_error(
            &[
                &GOOD[..],
                &[
                    "--assertion",
                    "--assertion-key-file",
                    missing.to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        assert!(error.contains("cannot read"), "{error}");
    }

    #[test]
    fn policy_rules_come_from_the_config_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daytona-authz.toml");
        let path = file.to_str().unwrap();
        let base = "preview-domain = \"preview.example.com\"\ndaytona-api-key = \"k\"\njwt-secret = \"0123456789abcdef0123456789abcdef\"\n";
        std::fs::write(
            &file,
            format!(
                "{base}[[policy]]\nname = \"team members open their team's sandboxes\"\nallow = 'token.groups.exists(g, g == sandbox.labels[\"team\"])'\n\n[[policy]]\nname = \"platform admins open everything, port 22222 excepted\"\nallow = '\"platform-admins\" in token.groups && request.port != 22222'\n"
            ),
        )
        .unwrap();
        let config = serve(&["--config", path]).unwrap();
        assert_eq!(config.policies.len(), 2);
        let rules = config.rules.unwrap();
        assert_eq!(
            rules.names().collect::<Vec<_>>(),
            [
                "team members open their team's sandboxes",
                "platform admins open everything, port 22222 excepted"
            ]
        );
        // check-config reads them too.
        let cli = parse_from(["daytona-authz", "check-config", "--config", path]).unwrap();
        match cli.command {
            Command::CheckConfig(args) => assert_eq!(args.serve.policies.len(), 2),
            _ => unreachable!(),
        }
        // No rules: none.
        std::fs::write(&file, base).unwrap();
        assert!(serve(&["--config", path]).unwrap().rules.is_none());

        // A broken expression is a validation error (exit 64) naming the rule.
        std::fs::write(
            &file,
            format!("{base}[[policy]]\nname = \"ok\"\nallow = 'true'\n[[policy]]\nname = \"broken rule\"\nallow = 'token.groups.exists(g, '\n"),
        )
        .unwrap();
        let errors = serve(&["--config", path]).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(
            errors.0[0]
                .0
                .starts_with("[[policy]] \"broken rule\": allow does not parse"),
            "{errors}"
        );
        // Rules over an identity provider's tokens need the audience those tokens must name.
        std::fs::write(
            &file,
            "preview-domain = \"preview.example.com\"\ndaytona-api-key = \"k\"\njwks-url = \"https://idp.example.com/jwks\"\n[[policy]]\nname = \"ok\"\nallow = 'true'\n",
        )
        .unwrap();
        let errors = serve(&["--config", path]).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(
            errors.0[0].0.starts_with(
                "[[policy]] with --jwks-url or --introspection-url needs --sso-audience"
            ),
            "{errors}"
        );
        let config = serve(&["--config", path, "--sso-audience", "previews"]).unwrap();
        assert_eq!(config.sso.audience.as_deref(), Some("previews"));
        // Our cookie and the filter's cannot share a name.
        for clash in [
            &["--cookie-name", "IdToken", "--sso-token-cookie", "IdToken"][..],
            &["--sso-token-cookie", "daytona_authz"][..],
            &["--cookie-name", "OauthHMAC"][..],
        ] {
            let mut args = vec!["--config", path, "--sso-audience", "previews"];
            args.extend_from_slice(clash);
            let errors = serve(&args).unwrap_err();
            assert!(
                errors
                    .0
                    .iter()
                    .any(|e| e.0.contains("is also a cookie of the OAuth2 filter")),
                "{clash:?}: {errors}"
            );
        }
        // An unknown field of a rule, a rule without allow, and policy that is not tables are
        // refused while reading the file.
        for (text, says) in [
            (
                "[[policy]]\nname = \"x\"\nallow = 'true'\nalow = 'false'\n",
                "unknown field \"alow\"",
            ),
            ("[[policy]]\nname = \"x\"\n", "needs both name and allow"),
            ("policy = \"true\"\n", "not [[policy]] tables"),
            (
                "[[policy]]\nname = \"x\"\nallow = true\n",
                "allow must be a string",
            ),
        ] {
            std::fs::write(&file, format!("{base}{text}")).unwrap();
            let error = parse_from(["daytona-authz", "serve", "--config", path]).unwrap_err();
            assert!(error.to_string().contains(says), "{text}: {error}");
        }
    }
}
