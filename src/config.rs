//! The configuration file. Every setting can be given on the command line, as a `PATRON_*`
//! environment variable, or in a TOML file whose keys are those variables' names without the
//! `PATRON_` prefix, in lower case:
//!
//! ```toml
//! database_url = "postgres://patron@db.internal/patron"
//! address = "0.0.0.0:8080"
//! ready_lag_seconds = 60
//! write_keys = ["wk_shop", "wk_app"]
//! earliest_time = 2000-01-01
//! ```
//!
//! The file is `--config PATH`, else `PATRON_CONFIG`, else `patron.toml` in the working
//! directory if there is one. The command line wins over the environment, which wins over the
//! file.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use thiserror::Error;

use crate::cli::Cli;

/// The file read when no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "patron.toml";

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("the configuration file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key names no setting, or its value has no single text form.
    #[error("the configuration file {path}: `{key}`: {message}")]
    Setting {
        /// The file.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The environment variables the command line reads, across every subcommand.
fn known_variables() -> BTreeSet<String> {
    fn walk(command: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                into.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, into);
        }
    }
    let mut known = BTreeSet::new();
    walk(&Cli::command(), &mut known);
    known.remove("PATRON_CONFIG");
    known
}

/// The configuration file named by `args` (`--config PATH` or `--config=PATH`), the
/// environment, or the default, if any.
fn config_path(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(|p| (PathBuf::from(p), true));
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some((PathBuf::from(path), true));
        }
    }
    if let Some(path) = std::env::var_os("PATRON_CONFIG") {
        return Some((PathBuf::from(path), true));
    }
    let default = Path::new(DEFAULT_CONFIG_FILE);
    default.exists().then(|| (default.to_path_buf(), false))
}

/// The settings of a configuration file's text, as `(variable, value)` pairs.
pub fn settings(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.message().to_owned(),
        })?;
    let known = known_variables();
    let mut found = Vec::with_capacity(table.len());
    for (key, value) in table {
        let bad = |message: String| ConfigError::Setting {
            path: path.to_path_buf(),
            key: key.clone(),
            message,
        };
        let variable = format!("PATRON_{}", key.to_ascii_uppercase());
        if !known.contains(&variable) {
            let keys: Vec<String> = known
                .iter()
                .map(|v| v.trim_start_matches("PATRON_").to_ascii_lowercase())
                .collect();
            return Err(bad(format!("no such setting; known: {}", keys.join(", "))));
        }
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("a list of text is expected, not {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => {
                return Err(bad(format!(
                    "a text, number, date or list is expected, not {other}"
                )))
            }
        };
        found.push((variable, text));
    }
    Ok(found)
}

/// Reads the configuration file (if any) and sets, for each of its settings, the environment
/// variable it stands for unless that is already set. Call before parsing the command line and
/// before starting any thread. Returns the file read.
pub fn apply(args: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
    let Some((path, named)) = config_path(args) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    for (variable, value) in settings(&path, &text)? {
        if std::env::var_os(&variable).is_none() {
            // Single-threaded still: nothing else reads the environment yet.
            std::env::set_var(variable, value);
        }
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_to_their_variables() {
        let found = settings(
            Path::new("p.toml"),
            "database_url = \"sqlite://x.db\"\nready_lag_seconds = 60\nwrite_keys = [\"a\", \"b\"]\n",
        )
        .unwrap();
        assert_eq!(
            found,
            vec![
                ("PATRON_DATABASE_URL".into(), "sqlite://x.db".into()),
                ("PATRON_READY_LAG_SECONDS".into(), "60".into()),
                ("PATRON_WRITE_KEYS".into(), "a,b".into()),
            ]
        );
    }

    #[test]
    fn dates_and_times_are_settings() {
        let found = settings(
            Path::new("p.toml"),
            "earliest_time = 2000-01-01T08:00:00+08:00\n",
        )
        .unwrap();
        assert_eq!(
            found,
            vec![(
                "PATRON_EARLIEST_TIME".into(),
                "2000-01-01T08:00:00+08:00".into()
            )]
        );
        let found = settings(Path::new("p.toml"), "earliest_time = 2000-01-01\n").unwrap();
        assert_eq!(found[0].1, "2000-01-01");
    }

    #[test]
    fn unknown_keys_and_bad_files_are_named() {
        let e = settings(Path::new("p.toml"), "databse_url = \"x\"").unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("`databse_url`") && message.contains("database_url"),
            "{message}"
        );
        let e = settings(Path::new("p.toml"), "database_url = ").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }
}
