//! Every binary's options come from four layers, highest first: command-line flags, `HERALD_*`
//! environment variables, the TOML file named by `--config` (keys are the options' names with
//! underscores: `max_body = "1MiB"`), and the default in the option's attribute.
//!
//! clap reads flags, the environment and the defaults; the file is slid in between by turning
//! its values into the defaults of the options it names, so one value parser validates every
//! layer and `--help` still shows the built-in default.

use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use clap::{Args, Command, FromArgMatches, Parser, error::ErrorKind};

/// The id of the option that names the config file (`--config`, in every binary).
pub const CONFIG: &str = "config";

/// Parses the process's arguments, environment and config file; on a bad value prints clap's
/// message naming the option and exits with 2 (`--help` and `--version` exit with 0).
pub fn parse<T: Parser>() -> T {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// [`parse`] over the given arguments (the first is the binary's name).
pub fn try_parse_from<T, I, A>(args: I) -> Result<T, clap::Error>
where
    T: Parser,
    I: IntoIterator<Item = A>,
    A: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = T::command();
    let first = command
        .try_get_matches_from_mut(args.iter().cloned())
        .map_err(|e| named(e, &mut command))?;
    if let Ok(Some(path)) = first.try_get_one::<PathBuf>(CONFIG) {
        // A fresh command: one clap has built for parsing is not to be changed.
        command = over_file(T::command(), path).map_err(|message| {
            command.error(
                ErrorKind::InvalidValue,
                format!("config file {}: {message}", path.display()),
            )
        })?;
    }
    let matches = command
        .try_get_matches_from_mut(args)
        .map_err(|e| named(e, &mut command))?;
    T::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

/// A value its parser refused, said as `--option MESSAGE (got 'VALUE')`: the option first, the
/// way a [`ConfigError`] reads, whichever layer the value came from.
fn named(e: clap::Error, command: &mut Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    use std::error::Error;
    if e.kind() != ErrorKind::ValueValidation {
        return e;
    }
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (Some(arg), Some(value), Some(source)) = (
        text(ContextKind::InvalidArg),
        text(ContextKind::InvalidValue),
        e.source(),
    ) else {
        return e;
    };
    let flag = arg.split(' ').next().unwrap_or(&arg);
    command.error(
        ErrorKind::ValueValidation,
        format!("{flag} {source} (got '{value}')"),
    )
}

/// The options `T` would have with no flag, no environment and no file: the defaults, written
/// once in `T`'s attributes.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let mut command =
        T::augment_args(Command::new("defaults")).mut_args(|a| a.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from_mut(["defaults"])
        .expect("every option has a default or is optional");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// `command` with the values of the file at `path` as its defaults.
fn over_file(mut command: Command, path: &Path) -> Result<Command, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    for (key, value) in table {
        let known = command
            .get_arguments()
            .any(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != CONFIG);
        if !known {
            return Err(format!("unknown option `{key}`"));
        }
        let values = match value {
            toml::Value::Array(items) => items.into_iter().map(scalar).collect(),
            other => scalar(other).map(|v| vec![v]),
        }
        .map_err(|what| format!("`{key}` is {what}; expected a string, number or boolean"))?;
        command = command.mut_arg(&key, |a| a.default_values(values));
    }
    Ok(command)
}

/// A TOML scalar as the text a flag would carry.
fn scalar(value: toml::Value) -> Result<String, &'static str> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) => Err("a nested array"),
        toml::Value::Table(_) => Err("a table"),
    }
}

/// An invalid combination of options, found when they are resolved into a runtime config.
/// Binaries print it and exit with 2, as for a bad flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    option: &'static str,
    message: String,
}

impl ConfigError {
    /// `option` (`--drain-jitter`) is wrong, as `message` says.
    pub fn new(option: &'static str, message: impl fmt::Display) -> Self {
        Self {
            option,
            message: message.to_string(),
        }
    }

    /// The option named.
    pub fn option(&self) -> &'static str {
        self.option
    }

    /// Prints `error: --OPTION MESSAGE` as clap prints a bad flag, and exits with 2.
    pub fn exit(&self, name: &str) -> ! {
        eprintln!("error: {self}\n\nFor more information, try '{name} --help'.");
        std::process::exit(2)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.option, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::units;

    #[derive(Debug, Parser)]
    struct Options {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, env = "HERALD_TEST_LAYERED_HEARTBEAT", default_value = "15s", value_parser = units::positive_duration)]
        heartbeat: Duration,
        #[arg(long, default_value_t = 100, value_parser = units::count(1..=1000))]
        max_batch: usize,
        #[arg(long, value_delimiter = ',', default_value = "updates")]
        subscribe: Vec<String>,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        archiver: bool,
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Options, clap::Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv = vec!["herald", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        try_parse_from(argv)
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_default() {
        let o = with_file(
            "heartbeat = \"3s\"\nmax_batch = 7\nsubscribe = [\"a\", \"b\"]\narchiver = false\n",
            &["--heartbeat", "9s"],
        )
        .unwrap();
        assert_eq!(o.heartbeat, Duration::from_secs(9));
        assert_eq!(o.max_batch, 7);
        assert_eq!(o.subscribe, ["a", "b"]);
        assert!(!o.archiver);
        let o = try_parse_from::<Options, _, _>(["herald"]).unwrap();
        assert_eq!((o.heartbeat, o.max_batch), (Duration::from_secs(15), 100));
    }

    #[test]
    fn the_file_is_validated_like_a_flag() {
        let e = with_file("max_batch = 0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("--max-batch must be 1 to 1000"), "{e}");
        let e = with_file("heartbeat = \"0s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--heartbeat must be above zero"), "{e}");
        let e = with_file("no_such_option = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option `no_such_option`"), "{e}");
        let e = with_file("config = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown option `config`"), "{e}");
        let e = with_file("heartbeat = { a = 1 }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("a table"), "{e}");
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let e = try_parse_from::<Options, _, _>(["herald", "--max-batch", "1001"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .contains("--max-batch must be 1 to 1000 (got '1001')"),
            "{e}"
        );
    }

    #[derive(Debug, clap::Args)]
    struct Only {
        #[arg(long, env = "HERALD_TEST_LAYERED_ONLY", default_value = "2s", value_parser = units::duration)]
        retry: Duration,
    }

    #[test]
    fn defaults_ignore_the_environment() {
        assert_eq!(defaults::<Only>().retry, Duration::from_secs(2));
    }
}
