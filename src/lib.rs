//! daytona-authz: the Envoy ext_authz service in front of private Daytona sandboxes.
//!
//! Request path: client → Envoy → `Check` here (token → grant → preview token) → Envoy forwards
//! to Daytona's preview proxy with `X-Daytona-Preview-Token` set and the caller's credentials
//! removed.
//!
//! Layers, each importing only those below it (the `layers` test holds the code to this):
//! - [`cli`]: the process entry, exit codes, and the client commands.
//! - [`serve`]: the running servers (ext_authz, admin API, HTTP) and their lifecycle; the only
//!   layer that sees all those below.
//! - [`config`]: flags, environment, config file and secrets, validated as a whole.
//! - [`daytona`] (API client, preview-URL allow-list, preview-token cache) and [`identity`]
//!   (JWKS, introspection, revocation, minting): the edges that do I/O.
//! - [`authz`]: the decision core (request, host, token, verdict, denial), no I/O.
//! - Leaves: [`outbound`] (HTTP client plumbing, trusted CAs), [`cache`] (the one coalescing
//!   TTL cache), [`metrics`] and [`proto`].
#![forbid(unsafe_code)]

pub mod authz;
pub mod cache;
pub mod cli;
pub mod config;
pub mod daytona;
pub mod identity;
pub mod metrics;
pub mod outbound;
pub mod proto;
pub mod serve;

/// The layers above, checked: a `crate::` path in a module's code (not its comments or
/// strings) names only a layer below it, and no module climbs out with `super::super`.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// Each top-level module, its rank, and what it may import besides itself. A module may only
    /// name modules of a lower rank, so the layers cannot form a cycle.
    const LAYERS: &[(&str, u8, &[&str])] = &[
        ("outbound", 0, &[]),
        ("cache", 0, &[]),
        ("metrics", 0, &[]),
        ("proto", 0, &[]),
        ("authz", 1, &[]),
        ("identity", 2, &["authz", "cache", "metrics", "outbound"]),
        ("daytona", 2, &["authz", "cache", "metrics", "outbound"]),
        (
            "config",
            3,
            &["authz", "identity", "daytona", "metrics", "outbound"],
        ),
        (
            "serve",
            4,
            &[
                "authz", "identity", "daytona", "config", "metrics", "outbound", "proto",
            ],
        ),
        (
            "cli",
            5,
            &["config", "authz", "identity", "outbound", "proto", "serve"],
        ),
    ];

    fn rank(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(m, _, _)| *m == module)
            .map(|(_, r, _)| *r)
            .unwrap_or_else(|| panic!("{module} has no place in the layers"))
    }

    fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_owned());
        }
    }

    /// A line without its string literals and its `//` comment.
    fn code(line: &str) -> String {
        let mut out = String::new();
        let mut chars = line.chars().peekable();
        let mut in_string = false;
        while let Some(c) = chars.next() {
            match (in_string, c) {
                (true, '\\') => {
                    chars.next();
                }
                (true, '"') => in_string = false,
                (true, _) => {}
                (false, '"') => in_string = true,
                (false, '/') if chars.peek() == Some(&'/') => break,
                (false, c) => out.push(c),
            }
        }
        out
    }

    /// The top-level modules a line of code names through `crate::`.
    fn named(code: &str) -> Vec<String> {
        code.match_indices("crate::")
            .filter(|(at, _)| {
                // `crate::`, not `daytona_crate::` or the like.
                !code[..*at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
            .map(|(at, _)| {
                code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    #[test]
    fn each_layer_imports_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = Vec::new();
        for (module, own_rank, allowed) in LAYERS {
            for name in *allowed {
                assert!(
                    rank(name) < *own_rank,
                    "{module} may not use {name}: not below it"
                );
            }
            let mut files = Vec::new();
            let folder = src.join(module);
            sources(&folder, &mut files);
            sources(&folder.with_extension("rs"), &mut files);
            assert!(!files.is_empty(), "no sources for {module}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = code(line);
                    let mut bad: Vec<String> = named(&code)
                        .into_iter()
                        .filter(|name| name != module && !allowed.contains(&name.as_str()))
                        .collect();
                    if code.contains("super::super") || code.contains("crate as ") {
                        bad.push("a path around the layers".into());
                    }
                    if !bad.is_empty() {
                        problems.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "imports across layers:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_scanner_sees_code_not_comments_or_strings() {
        assert_eq!(
            named(&code("use crate::serve::x; // crate::cli")),
            ["serve"]
        );
        assert!(named(&code(r#"let url = "http://x"; crate::cli::run()"#)) == ["cli"]);
        assert!(named(&code(r#"let s = "crate::serve";"#)).is_empty());
        assert_eq!(named(&code("crate::authz::token_x")), ["authz"]);
    }

    #[test]
    fn every_module_has_a_place_in_the_layers() {
        let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
            .unwrap();
        for line in lib.lines() {
            let Some(module) = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            rank(module);
        }
    }
}
