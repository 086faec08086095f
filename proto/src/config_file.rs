//! `--config FILE`: a TOML file of a subcommand's settings, for the
//! services' command lines (feature `service`).
//!
//! Each key of the file is the long name of one of the subcommand's flags
//! (`data-dir`, or `data_dir`), and each value a string, number or boolean:
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data-dir = "/var/lib/lockbox/kms"
//! log-format = "json"
//! ```
//!
//! A setting given on the command line or in the flag's environment variable
//! wins over the file, and the file wins over the built-in default. A key
//! that is no flag of the subcommand is an error (a typo must not be
//! ignored), except a key that a sibling subcommand with `--config` knows:
//! one file can serve both `serve` and `init`. Values are checked by the
//! flag's own parser, and errors name the file and the key. Relative paths
//! in the file are relative to the working directory, as on the command
//! line.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, Parser};

/// The id (and long name) of the flag that names the file.
pub const CONFIG_ARG: &str = "config";

/// Largest settings file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// [`try_parse_from`] over the process's arguments; prints the error (or
/// help) and exits like `Parser::parse` when parsing fails.
pub fn parse<C: Parser>() -> C {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses `args` like `C::try_parse_from`, with the settings of the file
/// named by the chosen subcommand's `--config` (or its environment
/// variable) filled in below the command line and the environment.
pub fn try_parse_from<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = C::command();
    // A first, forgiving pass finds the subcommand and the file; whatever
    // is wrong with the command line is reported by the real pass below.
    let Ok(matches) = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)
    else {
        return C::try_parse_from(args);
    };
    let (path, sub, sub_matches) = chosen(&command, &matches);
    let Some(file) = config_path(sub, sub_matches) else {
        return C::try_parse_from(args);
    };
    // Errors show the usage of the subcommand as invoked.
    let usage = sub.clone().bin_name(
        std::iter::once(command.get_name().to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let sub = &usage;
    let settings = read(&file)?;
    let siblings = siblings(&command, &path);
    let mut injected = Vec::new();
    let mut from_file: Vec<(String, String)> = Vec::new();
    for (key, value) in &settings {
        let long = key.replace('_', "-");
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            if siblings.iter().any(|c| has_long(c, &long)) {
                continue;
            }
            return Err(invalid(
                sub,
                &file,
                key,
                &format!("no such setting; the settings are {}", longs(sub)),
            ));
        };
        if arg.get_id() == CONFIG_ARG {
            return Err(invalid(
                sub,
                &file,
                key,
                "a settings file cannot name another",
            ));
        }
        if matches!(
            sub_matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        injected.extend(flag(sub, arg, &file, key, value)?);
        from_file.push((long, key.clone()));
    }
    // Right after the subcommand's name, so they belong to it.
    let at = position_after(&args, &path);
    let mut full = args;
    full.splice(at..at, injected);
    C::try_parse_from(full).map_err(|e| {
        // A value the flag's parser refused came from the file when the
        // command line and the environment did not set that flag.
        let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
            return e;
        };
        let Some((_, key)) = from_file.iter().find(|(long, _)| {
            flag.strip_prefix("--")
                .and_then(|rest| rest.strip_prefix(long.as_str()))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
        }) else {
            return e;
        };
        // clap's own explanation (with any "[possible values: …]"), without
        // its usage lines.
        let rendered = e.render().to_string();
        let detail = rendered
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        invalid(&usage, &file, key, detail.trim_start_matches("error: "))
    })
}

/// The names of the chosen subcommands (outermost first), the innermost
/// one's definition and its matches.
fn chosen<'a>(
    command: &'a Command,
    matches: &'a ArgMatches,
) -> (Vec<String>, &'a Command, &'a ArgMatches) {
    let (mut path, mut sub, mut sub_matches) = (Vec::new(), command, matches);
    while let Some((name, m)) = sub_matches.subcommand() {
        let Some(next) = sub.find_subcommand(name) else {
            break;
        };
        path.push(name.to_owned());
        sub = next;
        sub_matches = m;
    }
    (path, sub, sub_matches)
}

fn config_path(sub: &Command, matches: &ArgMatches) -> Option<PathBuf> {
    if !has_long(sub, CONFIG_ARG) {
        return None;
    }
    matches
        .try_get_one::<PathBuf>(CONFIG_ARG)
        .ok()
        .flatten()
        .cloned()
}

/// The other subcommands beside the chosen one that take `--config`.
fn siblings<'a>(command: &'a Command, path: &[String]) -> Vec<&'a Command> {
    let Some((last, parents)) = path.split_last() else {
        return Vec::new();
    };
    let mut parent = command;
    for name in parents {
        match parent.find_subcommand(name) {
            Some(next) => parent = next,
            None => return Vec::new(),
        }
    }
    parent
        .get_subcommands()
        .filter(|c| c.get_name() != last && has_long(c, CONFIG_ARG))
        .collect()
}

fn has_long(command: &Command, long: &str) -> bool {
    command.get_arguments().any(|a| a.get_long() == Some(long))
}

fn longs(command: &Command) -> String {
    command
        .get_arguments()
        .filter_map(Arg::get_long)
        .filter(|l| *l != CONFIG_ARG && *l != "help")
        .collect::<Vec<_>>()
        .join(", ")
}

fn read(file: &Path) -> Result<toml::Table, clap::Error> {
    let bad = |kind, what: String| {
        clap::Error::raw(
            kind,
            format!("the settings file {} {what}\n", file.display()),
        )
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| bad(ErrorKind::Io, format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(bad(
            ErrorKind::InvalidValue,
            format!("is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| bad(ErrorKind::InvalidValue, "is not UTF-8 text".into()))?;
    text.parse::<toml::Table>()
        .map_err(|e| bad(ErrorKind::InvalidValue, format!("is not valid TOML: {e}")))
}

/// The command-line words that set `arg` to `value`.
fn flag(
    sub: &Command,
    arg: &Arg,
    file: &Path,
    key: &str,
    value: &toml::Value,
) -> Result<Vec<OsString>, clap::Error> {
    let long = arg.get_long().unwrap_or_default();
    if !arg.get_action().takes_values() {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}").into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(invalid(sub, file, key, "want true or false")),
        };
    }
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => {
            return Err(invalid(
                sub,
                file,
                key,
                "want a string, a number or a boolean",
            ));
        }
    };
    Ok(vec![format!("--{long}={text}").into()])
}

fn invalid(sub: &Command, file: &Path, key: &str, why: &str) -> clap::Error {
    let mut sub = sub.clone();
    clap::Error::raw(
        ErrorKind::InvalidValue,
        format!("{}: setting `{key}`: {why}", file.display()),
    )
    .format(&mut sub)
}

/// The index just after the last of `path`'s subcommand names in `args`.
fn position_after(args: &[OsString], path: &[String]) -> usize {
    let mut at = usize::from(!args.is_empty());
    for name in path {
        if let Some(i) = args[at..].iter().position(|a| a == name.as_str()) {
            at += i + 1;
        }
    }
    at
}

#[cfg(test)]
mod tests;
