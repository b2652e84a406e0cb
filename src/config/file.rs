//! The config file (`--config`, TOML): its keys become defaults below flags and environment
//! variables; its `[[policy]]` tables (no flag has them) are the policy rules.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::*;
use crate::authz::policy::RuleSpec;

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
    let (defaults, policies) = file_defaults(&file)
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e.to_string()))?;
    // The file's values become the defaults of `serve` and `check-config`, so flags and
    // environment variables still win.
    let mut command = Cli::command();
    for name in ["serve", "check-config"] {
        command = command.mut_subcommand(name, |mut sub| {
            for (id, values) in &defaults {
                sub = sub.mut_arg(id.as_str(), |arg| arg.default_values(values.clone()));
            }
            sub
        });
    }
    let matches: ArgMatches = command.try_get_matches_from(&args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    match &mut cli.command {
        Command::Serve(serve) => serve.policies = policies,
        Command::CheckConfig(check) => check.serve.policies = policies,
        _ => {}
    }
    Ok(cli)
}

/// The `policy` key: an array of tables with exactly `name` and `allow`, both strings.
fn policy_tables(path: &Path, value: toml::Value) -> Result<Vec<RuleSpec>, ConfigError> {
    let bad = |why: String| ConfigError(format!("--config: {} {why}", path.display()));
    let toml::Value::Array(tables) = value else {
        return Err(bad(
            "has `policy` that is not [[policy]] tables (name = \"...\", allow = '<CEL>')".into(),
        ));
    };
    let mut rules = Vec::new();
    for (index, table) in tables.into_iter().enumerate() {
        let place = format!("[[policy]] #{}", index + 1);
        let toml::Value::Table(table) = table else {
            return Err(bad(format!("{place} is not a table")));
        };
        let (mut name, mut allow) = (None, None);
        for (key, value) in table {
            let toml::Value::String(text) = value else {
                return Err(bad(format!("{place}: {key} must be a string")));
            };
            match key.as_str() {
                "name" => name = Some(text),
                "allow" => allow = Some(text),
                other => {
                    return Err(bad(format!(
                        "{place}: unknown field {other:?} (a rule has name and allow)"
                    )));
                }
            }
        }
        match (name, allow) {
            (Some(name), Some(allow)) => rules.push(RuleSpec { name, allow }),
            _ => return Err(bad(format!("{place} needs both name and allow"))),
        }
    }
    Ok(rules)
}

/// What a config file sets: (argument id, values) pairs, and the policy rules.
pub(crate) type FileSettings = (Vec<(String, Vec<String>)>, Vec<RuleSpec>);

/// Reads a TOML config file into (argument id, values) pairs and its `[[policy]]` rules; unknown
/// keys are errors, and so is an array for a flag that is not repeatable.
pub(crate) fn file_defaults(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config: cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The message and the place only: toml's own text quotes the offending line, which
        // may hold a secret (`jwt-secret = "...`), and this ends up in logs on SIGHUP.
        let place = e.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        ConfigError(format!(
            "--config: {} is not TOML{place}: {}",
            path.display(),
            e.message().trim_end()
        ))
    })?;
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .expect("serve exists");
    let mut defaults = Vec::new();
    let mut policies = Vec::new();
    for (key, value) in table {
        if key == "policy" {
            policies = policy_tables(path, value)?;
            continue;
        }
        // Keys are the flag names (`preview-domain`; `preview_domain` too).
        let long = key.replace('_', "-");
        let argument = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()));
        let Some(argument) = argument.filter(|_| long != "config") else {
            return Err(ConfigError(format!(
                "--config: unknown key {key:?} in {} (keys are the flag names, e.g. preview-domain)",
                path.display()
            )));
        };
        let repeatable = matches!(argument.get_action(), clap::ArgAction::Append);
        let values = match value {
            toml::Value::Array(items) if repeatable => items
                .into_iter()
                .map(|item| scalar(&key, item))
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => {
                return Err(ConfigError(format!(
                    "--config: {key} takes one value, not an array"
                )));
            }
            other => vec![scalar(&key, other)?],
        };
        defaults.push((argument.get_id().to_string(), values));
    }
    Ok((defaults, policies))
}

/// A string, integer or boolean value, as the flag's text.
fn scalar(key: &str, value: toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(ConfigError(format!(
            "--config: {key} must be a string, integer or boolean (or an array of them, for a \
             repeatable flag), not {}",
            other.type_str()
        ))),
    }
}
