//! daytona-authz: the Envoy ext_authz service in front of private Daytona sandboxes.
//!
//! Request path: client → Envoy → `Check` here (token → grant → preview token) → Envoy forwards
//! to Daytona's preview proxy with `X-Daytona-Preview-Token` set and the caller's credentials
//! removed.
//!
//! Layers, each importing only those below it:
//! - [`serve`]: the running servers (ext_authz, admin API, HTTP) and their lifecycle; the only
//!   layer that sees all the others. [`cli`] is the process entry and the client commands.
//! - [`config`]: flags, environment, config file and secrets, validated as a whole.
//! - [`daytona`] (API client, preview-URL allow-list, preview-token cache) and [`identity`]
//!   (tokens, JWKS, introspection, revocation, minting): the edges that do I/O.
//! - [`authz`]: the decision core, no I/O. [`outbound`] (HTTP client plumbing, trusted CAs),
//!   [`cache`] (the one coalescing TTL cache), [`metrics`] and [`proto`] are shared leaves.
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

/// The layers above, checked: a `crate::` path in a module's code (not its comments) names only
/// the layers that module may use.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// Each top-level module and what it may import besides itself.
    const MAY_USE: &[(&str, &[&str])] = &[
        ("authz", &["identity::token"]),
        ("identity", &["authz", "cache", "metrics", "outbound"]),
        ("daytona", &["authz", "cache", "metrics", "outbound"]),
        (
            "config",
            &["authz", "identity", "daytona", "metrics", "outbound"],
        ),
        (
            "serve",
            &[
                "authz", "identity", "daytona", "config", "metrics", "outbound", "proto",
            ],
        ),
        ("cli", &["config", "identity", "outbound", "proto", "serve"]),
        ("outbound", &[]),
        ("cache", &[]),
        ("metrics", &[]),
        ("proto", &[]),
    ];

    fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_owned());
        }
    }

    #[test]
    fn each_layer_imports_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = Vec::new();
        for (module, allowed) in MAY_USE {
            let mut files = Vec::new();
            let folder = src.join(module);
            sources(&folder, &mut files);
            sources(&folder.with_extension("rs"), &mut files);
            assert!(!files.is_empty(), "no sources for {module}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    for (at, _) in code.match_indices("crate::") {
                        let path = &code[at + "crate::".len()..];
                        let ok =
                            path.starts_with(module) || allowed.iter().any(|a| path.starts_with(a));
                        if !ok {
                            problems.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                        }
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
    fn every_module_has_a_place_in_the_layers() {
        let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
            .unwrap();
        for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
            let module = line.trim_end_matches(';');
            assert!(
                MAY_USE.iter().any(|(m, _)| *m == module),
                "src/lib.rs declares `{module}`, which has no place in the layers"
            );
        }
    }
}
