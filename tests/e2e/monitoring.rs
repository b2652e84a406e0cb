//! What operators watch daytona-authz with, against the real thing:
//!
//! - the Grafana dashboard (`deploy/grafana/daytona-authz.json`): well formed, and every one of
//!   its queries answered with data by a real Prometheus that scrapes a real stack the way a
//!   deployment does, through Envoy's metrics listener (`GET /metrics` for daytona-authz,
//!   `GET /stats/prometheus` for Envoy). A renamed metric or label, or a query Prometheus
//!   cannot parse, fails here. Grafana itself is not in any package registry these machines
//!   reach; what it adds to a query is its variables, which the test substitutes as Grafana
//!   would;
//! - the alert rules (`deploy/prometheus/daytona-authz-rules.yaml`): `promtool check rules` and
//!   their unit tests (`promtool test rules`, made-up series that make each alert fire and not
//!   fire), then loaded into that same Prometheus, where every rule must evaluate without error
//!   on the real series, read only metrics the stack exposes, and none may fire or be pending
//!   on the healthy stack.
//!
//! Needs Prometheus and promtool: `PROMETHEUS_BIN` / `PROMTOOL_BIN`, else both on PATH
//! (Debian's `prometheus` package has both; `scripts/test` installs it). Without them these
//! tests skip, unless `CI` is set.

use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{
    AuthzOptions, Proc, Stack, bearer, eventually, free_port, now, optional_program, repo_root,
    token_for,
};

const DASHBOARD: &str = "deploy/grafana/daytona-authz.json";
const RULES: &str = "deploy/prometheus/daytona-authz-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/daytona-authz-rules.test.yaml";
/// Prometheus's job names for the two scrape paths, as in deploy/kubernetes/podmonitor.yaml.
const AUTHZ_JOB: &str = "daytona-authz";
const ENVOY_JOB: &str = "envoy";

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// The panels that chart something (rows excluded).
fn charts(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// Every query of the dashboard: (panel title, PromQL with Grafana's variables).
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    charts(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_owned()))
        })
        .collect()
}

/// The `$name` variables a query uses.
fn variables(expr: &str) -> BTreeSet<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The metric names a query reads (ours and Envoy's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Label lists of `by (...)` name labels, not metrics: drop them first.
    let mut rest = expr;
    let mut text = String::new();
    while let Some(at) = rest.find("by (") {
        text += &rest[..at];
        rest = &rest[at..];
        rest = &rest[rest.find(')').map_or(rest.len(), |end| end + 1)..];
    }
    text += rest;
    let mut names = BTreeSet::new();
    let mut word = String::new();
    // Whether the word being read follows a `$` (a Grafana variable such as `$envoy_job`), or
    // is inside a quoted label value.
    let mut variable = false;
    let mut quoted = false;
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        // A label name inside `{...}` is followed by a matcher; the metric names these
        // queries read all start with one of these two prefixes.
        if !variable
            && !quoted
            && (word.starts_with("daytona_authz_") || word.starts_with("envoy_"))
            && !matches!(c, '=' | '!' | '~')
        {
            names.insert(word.clone());
        }
        word.clear();
        variable = c == '$';
        if c == '"' {
            quoted = !quoted;
        }
    }
    names
}

/// What Grafana sends for a query with every variable at "All" (the dashboard's `allValue`),
/// except the job variables, which name the test's jobs so their filters are exercised.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$envoy_job", ENVOY_JOB)
        .replace("$instance", ".*")
        .replace("$job", AUTHZ_JOB)
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "daytona-authz");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let defined: HashSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        defined,
        HashSet::from(["datasource", "job", "instance", "envoy_job"])
    );

    let mut ids = HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let grid = &panel["gridPos"];
        let (x, w, h) = (grid["x"].as_u64(), grid["w"].as_u64(), grid["h"].as_u64());
        let (x, w, h) = (x.unwrap(), w.unwrap(), h.unwrap());
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {grid}");
    }
    for panel in charts(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            !panel["description"].as_str().unwrap_or("").is_empty(),
            "{title}: says nothing of what it shows"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: HashSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refId reused");
    }
    for (title, expr) in queries(&dashboard) {
        for variable in variables(&expr) {
            assert!(
                variable == "__rate_interval" || defined.contains(variable.as_str()),
                "{title}: ${variable} is not a variable of the dashboard: {expr}"
            );
        }
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: reads no metric: {expr}");
        // Every daytona-authz series is filtered by job and instance; Envoy's by its job.
        for name in names {
            let filter = if name.starts_with("envoy_") {
                "job=~\"$envoy_job\""
            } else {
                "job=~\"$job\", instance=~\"$instance\""
            };
            assert!(
                expr.contains(&format!("{name}{{{filter}")),
                "{title}: {name} is not filtered by {filter}: {expr}"
            );
        }
    }
}

/// A Prometheus on a free loopback port scraping `target` every second, as two jobs.
struct Prometheus {
    proc: Proc,
    http: reqwest::Client,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(bin: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo_root().join(RULES);
        let config = format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n\
             - job_name: {AUTHZ_JOB}\n  metrics_path: /metrics\n  \
               static_configs: [{{ targets: ['{target}'] }}]\n\
             - job_name: {ENVOY_JOB}\n  metrics_path: /stats/prometheus\n  \
               static_configs: [{{ targets: ['{target}'] }}]\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut proc = Proc::spawn(
            "prometheus",
            Command::new(bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn"),
        );
        let url = format!("http://{addr}");
        let http = reqwest::Client::new();
        eventually("Prometheus ready", Duration::from_secs(30), || {
            proc.assert_running();
            let request = http.get(format!("{url}/-/ready")).send();
            async move { (request.await.ok()?.status() == 200).then_some(()) }
        })
        .await;
        Prometheus {
            proc,
            http,
            url,
            _dir: dir,
        }
    }

    /// `GET /api/v1/{what}`'s `data`.
    async fn get(&self, what: &str) -> Value {
        let request = self.http.get(format!("{}/api/v1/{what}", self.url));
        self.data(request, what).await
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let request = self
            .http
            .post(format!("{}/api/v1/query", self.url))
            .form(&[("query", expr)]);
        let data = self.data(request, expr).await;
        data["result"].as_array().unwrap().clone()
    }

    /// The `data` of an API answer; panics (with Prometheus's log) unless it is a success.
    async fn data(&self, request: reqwest::RequestBuilder, what: &str) -> Value {
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert_eq!(
            answer["status"],
            "success",
            "{what}: {answer}\n{}",
            self.proc.stderr()
        );
        answer["data"].clone()
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alert_rules_work_on_a_real_prometheus() {
    let test = "the_dashboard_and_the_alert_rules_work_on_a_real_prometheus";
    let Some(bin) = optional_program("PROMETHEUS_BIN", "prometheus", test) else {
        return;
    };
    // An introspection endpoint that knows no token, so the introspection panels have data.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let introspection = format!("http://{}/introspect", listener.local_addr().unwrap());
    let endpoint = axum::Router::new().route(
        "/introspect",
        axum::routing::post(|| async { axum::Json(serde_json::json!({ "active": false })) }),
    );
    let endpoint = tokio::spawn(async move { axum::serve(listener, endpoint).await });
    let stack = Stack::start_with(AuthzOptions {
        extra_args: vec![
            "--introspection-url".into(),
            introspection,
            "--introspection-client-id".into(),
            "dashboard-test".into(),
        ],
        env: vec![(
            "DAYTONA_AUTHZ_INTROSPECTION_CLIENT_SECRET".into(),
            "dashboard-test-client-secret".into(),
        )],
        ..Default::default()
    })
    .await;
    let prometheus =
        Prometheus::start(&bin, &format!("127.0.0.1:{}", stack.envoy.metrics_port)).await;

    // Allowed, refused (no token: 401; another port: 403; an opaque token the introspection
    // endpoint calls inactive: 401) and a secret reload, so each labelled series a panel reads
    // exists.
    let host = stack.host(3000);
    let allowed = bearer(&stack.token(Some(vec![3000])));
    let other_port = bearer(&token_for(
        stack.sandbox_id(),
        Some(vec![8080]),
        now() + 600,
    ));
    let opaque = bearer("opaque-token-nobody-issued");
    let traffic = || async {
        for (what, authorization, status) in [
            ("valid token", Some(&allowed), 200),
            ("no token", None, 401),
            ("token for another port", Some(&other_port), 403),
            ("unknown opaque token", Some(&opaque), 401),
        ] {
            let headers: Vec<(&str, &str)> = authorization
                .map(|value| ("authorization", value.as_str()))
                .into_iter()
                .collect();
            let reply = stack.get(&host, "/", &headers).await;
            assert_eq!(reply.status, status, "{what}: {}", reply.body);
        }
    };
    traffic().await;
    stack.authz.signal("HUP");
    // Until both jobs were scraped three times, with traffic between scrapes so rates move.
    eventually(
        "three scrapes of each job",
        Duration::from_secs(30),
        || async {
            traffic().await;
            let scrapes = prometheus
                .query("count by (job) (count_over_time(up[1m]) >= 3)")
                .await;
            (scrapes.len() == 2).then_some(())
        },
    )
    .await;
    eventually(
        "the secret reload to be scraped",
        Duration::from_secs(30),
        || async {
            let reloads = prometheus
                .query("daytona_authz_secret_reloads_total{result=\"ok\"}")
                .await;
            (!reloads.is_empty()).then_some(())
        },
    )
    .await;
    let up = prometheus.query("up == 1").await;
    assert_eq!(
        up.len(),
        2,
        "a scrape through the metrics listener failed: {up:?}"
    );

    // What both endpoints expose: every metric a query reads is declared by a TYPE line.
    let http = reqwest::Client::new();
    let mut exposed = String::new();
    for path in ["/metrics", "/stats/prometheus"] {
        let url = format!("http://127.0.0.1:{}{path}", stack.envoy.metrics_port);
        exposed += &http.get(url).send().await.unwrap().text().await.unwrap();
    }
    let declared = |name: &str| {
        let family = ["_total", "_bucket"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        // OpenMetrics names a counter's family without `_total`; Envoy names it as the sample.
        [name, family]
            .iter()
            .any(|family| exposed.contains(&format!("# TYPE {family} ")))
    };

    let dashboard = dashboard();
    for (title, expr) in queries(&dashboard) {
        for name in metric_names(&expr) {
            assert!(declared(&name), "{title}: {name} is not exposed: {expr}");
        }
        let query = as_grafana_sends(&expr);
        let result = prometheus.query(&query).await;
        assert!(!result.is_empty(), "{title}: no data for {query}");
    }

    // The variables' `label_values(metric{...}, label)` queries find the test's jobs.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{definition}: not label_values(metric, label)"));
        let (selector, label) = inner.rsplit_once(", ").unwrap();
        let series = prometheus
            .query(&format!(
                "count by ({label}) ({})",
                as_grafana_sends(selector)
            ))
            .await;
        assert!(
            !series.is_empty(),
            "variable {}: no values",
            variable["name"]
        );
    }

    // The alert rules, loaded into the same Prometheus: each evaluated without error on the
    // real series, reading only metrics the stack exposes, and none pending or firing here.
    let rules = eventually(
        "every alert rule evaluated",
        Duration::from_secs(30),
        || async {
            let data = prometheus.get("rules?type=alert").await;
            let rules: Vec<Value> = data["groups"]
                .as_array()?
                .iter()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rules
                .iter()
                .all(|rule| rule["health"] != "unknown")
                .then_some(rules)
        },
    )
    .await;
    let written = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    assert_eq!(rules.len(), written.matches("- alert: ").count());
    for rule in &rules {
        let name = &rule["name"];
        assert_eq!(rule["health"], "ok", "{name}: {}", rule["lastError"]);
        let query = rule["query"].as_str().unwrap();
        for metric in metric_names(query) {
            assert!(
                declared(&metric),
                "{name}: {metric} is not exposed: {query}"
            );
        }
        assert_eq!(
            rule["state"], "inactive",
            "{name} on a healthy stack: {}",
            rule["alerts"]
        );
    }
    endpoint.abort();
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let test = "the_alert_rules_pass_promtool_and_their_unit_tests";
    let Some(promtool) = optional_program("PROMTOOL_BIN", "promtool", test) else {
        return;
    };
    for (what, file) in [("check", RULES), ("test", RULE_TESTS)] {
        let output = Command::new(&promtool)
            .args([what, "rules"])
            .arg(repo_root().join(file))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {what} rules {file}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
