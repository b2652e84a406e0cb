//! The config file (`--config`, TOML): its keys become defaults below flags and environment
//! variables.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::*;

/// Parses the command line, with a `serve`/`check-config` config file as the lowest-precedence
/// source above the defaults.
pub fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&args)?;
    let file = match matches.subcommand() {
        Some(("serve" | "check-config", sub)) => sub.get_one::<PathBuf>("config").cloned(),
        _ => None,
    };
    let Some(file) = file else {
        return Cli::from_arg_matches(&matches);
    };
    let defaults = file_defaults(&file)
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e.to_string()))?;
    // The file's values become the defaults of `serve` and `check-config`, so flags and
    // environment variables still win.
    let mut command = Cli::command();
    for name in ["serve", "check-config"] {
        command = command.mut_subcommand(name, |mut sub| {
            for (id, value) in &defaults {
                sub = sub.mut_arg(id.as_str(), |arg| arg.default_value(value.clone()));
            }
            sub
        });
    }
    let matches: ArgMatches = command.try_get_matches_from(&args)?;
    Cli::from_arg_matches(&matches)
}

/// Reads a TOML config file into (argument id, value) pairs; unknown keys are errors.
pub(crate) fn file_defaults(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config: cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("--config: {} is not TOML: {e}", path.display())))?;
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .expect("serve exists");
    let mut defaults = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if id == "config" || !serve.get_arguments().any(|a| a.get_id() == id.as_str()) {
            return Err(ConfigError(format!(
                "--config: unknown key {key:?} in {} (keys are the flag names, e.g. preview-domain)",
                path.display()
            )));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError(format!(
                    "--config: {key} must be a string, integer or boolean, not {}",
                    other.type_str()
                )));
            }
        };
        defaults.push((id, value));
    }
    Ok(defaults)
}
