//! `--envoy-config`: Envoy's own config files, read for the per-route settings their routes and
//! virtual hosts give daytona-authz (ext_authz `check_settings.context_extensions`), so a typo
//! or a port outside `--port-range` fails at start-up (and in `check-config`, and refuses a
//! reload) instead of turning a route's requests into 500s. The route names found are the only
//! ones the metrics label by name.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use super::ConfigError;
use crate::authz::host::PortRange;
use crate::authz::route::Route;

/// Largest Envoy config file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One route's (or virtual host's) settings, and where they were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyRoute {
    /// `file: listener > route config > virtual host > route`, by the `name`s on the way.
    pub location: String,
    pub route: Route,
}

/// Every `context_extensions` in `paths` that holds a `daytona_authz.*` key, checked against
/// `ports`; every problem, each naming its place.
pub fn routes(paths: &[PathBuf], ports: PortRange) -> Result<Vec<EnvoyRoute>, Vec<ConfigError>> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        match read(path) {
            Ok(documents) => {
                for document in &documents {
                    let mut names = Vec::new();
                    walk(document, path, &mut names, ports, &mut found, &mut problems);
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

fn read(path: &Path) -> Result<Vec<Yaml>, ConfigError> {
    let cannot = |why: String| ConfigError(format!("--envoy-config: {}: {why}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| cannot(format!("cannot read it ({e})")))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(cannot(format!("{size} bytes; at most {MAX_FILE_BYTES}")));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| cannot(format!("cannot read it ({e})")))?;
    YamlLoader::load_from_str(&text).map_err(|e| cannot(format!("not YAML ({e})")))
}

fn walk(
    node: &Yaml,
    path: &Path,
    names: &mut Vec<String>,
    ports: PortRange,
    found: &mut Vec<EnvoyRoute>,
    problems: &mut Vec<ConfigError>,
) {
    match node {
        Yaml::Hash(map) => {
            let name = map
                .get(&Yaml::String("name".into()))
                .and_then(Yaml::as_str)
                .map(str::to_owned);
            let named = name.is_some();
            names.extend(name);
            for (key, value) in map {
                if key.as_str() == Some("context_extensions") {
                    extensions(value, path, names, ports, found, problems);
                } else if key.as_str() == Some("envoy.filters.http.ext_authz")
                    && value["disabled"] == Yaml::Boolean(true)
                {
                    problems.push(ConfigError(format!(
                        "--envoy-config: {}: {}: ext_authz is disabled there, so its requests would \
                         reach sandboxes without daytona-authz (ext_authz re-picks the route: every \
                         route must stay behind it; use daytona_authz.access: preview-token-only)",
                        path.display(),
                        names.join(" > ")
                    )));
                } else {
                    walk(value, path, names, ports, found, problems);
                }
            }
            if named {
                names.pop();
            }
        }
        Yaml::Array(items) => {
            for item in items {
                walk(item, path, names, ports, found, problems);
            }
        }
        _ => {}
    }
}

fn extensions(
    value: &Yaml,
    path: &Path,
    names: &[String],
    ports: PortRange,
    found: &mut Vec<EnvoyRoute>,
    problems: &mut Vec<ConfigError>,
) {
    let location = format!("{}: {}", path.display(), names.join(" > "));
    let Yaml::Hash(map) = value else {
        // An alias (`*name`) repeats a mapping already read where its anchor is.
        return;
    };
    let pairs: Vec<(String, String)> = map
        .iter()
        .filter_map(|(k, v)| {
            let value = match v {
                Yaml::String(s) | Yaml::Real(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                _ => String::new(),
            };
            Some((k.as_str()?.to_owned(), value))
        })
        .collect();
    if !pairs
        .iter()
        .any(|(k, _)| k.starts_with(crate::authz::route::PREFIX))
    {
        return;
    }
    let route = Route::from_extensions(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .and_then(|route| route.check(ports).map(|()| route));
    match route {
        Ok(route) => found.push(EnvoyRoute { location, route }),
        Err(error) => problems.push(ConfigError(format!(
            "--envoy-config: {location}: context_extensions: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str, ports: PortRange) -> Result<Vec<EnvoyRoute>, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, yaml).unwrap();
        routes(&[path], ports)
    }

    const CONFIG: &str = r#"
static_resources:
  listeners:
  - name: public
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          route_config:
            name: preview
            virtual_hosts:
            - name: any
              domains: ["*"]
              routes: &routes
              - name: fail_closed
                match: { prefix: "/" }
            - name: hooks
              domains: ["8080-*"]
              routes: *routes
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  check_settings:
                    context_extensions:
                      daytona_authz.route: hooks
                      daytona_authz.ports: "8080"
                      daytona_authz.access: preview-token-only
            - name: other_filter
              domains: ["x.*"]
              typed_per_filter_config:
                some.filter:
                  context_extensions: { team: x }
"#;

    #[test]
    fn routes_are_found_with_where_they_are() {
        let found = check(CONFIG, PortRange::DAYTONA).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .location
                .ends_with("envoy.yaml: public > hcm > preview > hooks"),
            "{}",
            found[0].location
        );
        assert_eq!(found[0].route.name.as_deref(), Some("hooks"));
    }

    #[test]
    fn a_typo_or_a_port_outside_the_range_fails_naming_the_route() {
        let typo = CONFIG.replace("daytona_authz.ports", "daytona_authz.prots");
        let problems = check(&typo, PortRange::DAYTONA).unwrap_err();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(
            text.contains("> hooks") && text.contains("daytona_authz.prots"),
            "{text}"
        );

        let narrow = PortRange::parse("3000-8000").unwrap();
        let problems = check(CONFIG, narrow).unwrap_err();
        assert!(
            problems[0].to_string().contains("--port-range 3000-8000"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_route_without_ext_authz_is_refused() {
        let disabled = CONFIG.replace(
            "                  check_settings:\n                    context_extensions:\n                      daytona_authz.route: hooks",
            "                  disabled: true\n                  check_settings:\n                    context_extensions:\n                      daytona_authz.route: hooks",
        );
        assert_ne!(disabled, CONFIG);
        let problems = check(&disabled, PortRange::DAYTONA).unwrap_err();
        assert!(
            problems[0]
                .to_string()
                .contains("> hooks: ext_authz is disabled"),
            "{problems:?}"
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let problems = routes(
            &[PathBuf::from("/nonexistent/envoy.yaml")],
            PortRange::DAYTONA,
        )
        .unwrap_err();
        assert!(problems[0].to_string().contains("/nonexistent/envoy.yaml"));
        let problems = check("a: [", PortRange::DAYTONA).unwrap_err();
        assert!(problems[0].to_string().contains("not YAML"), "{problems:?}");
    }

    #[test]
    fn the_shipped_examples_pass() {
        // envoy/envoy.yaml ships its examples commented out: uncommented, they are valid.
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/envoy.yaml"),
        )
        .unwrap();
        let mut inside = false;
        let uncommented: String = shipped
            .lines()
            .filter_map(|line| {
                let text = line.trim_start();
                if text.starts_with("# BEGIN per-route examples") {
                    inside = true;
                    return None;
                }
                if text.starts_with("# END per-route examples") {
                    inside = false;
                    return None;
                }
                let indent = &line[..line.len() - text.len()];
                Some(match text.strip_prefix("# ") {
                    Some(rest) if inside => format!("{indent}{rest}"),
                    _ => line.to_owned(),
                })
            })
            .collect::<Vec<_>>()
            .join("\n");
        let found = check(&uncommented, PortRange::DAYTONA).unwrap();
        let names: Vec<_> = found.iter().filter_map(|r| r.route.name.clone()).collect();
        assert_eq!(names, ["webhooks", "partners"]);
        assert!(check(&shipped, PortRange::DAYTONA).unwrap().is_empty());
    }
}
