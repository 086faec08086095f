use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::try_parse_from;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Serve(Serve),
    Init(Init),
    Other {
        #[arg(long)]
        x: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Serve {
    #[arg(long, default_value = "127.0.0.1:1")]
    listen: SocketAddr,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=100))]
    interval: u64,
    #[arg(long)]
    verbose: bool,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct Init {
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long)]
    config: Option<PathBuf>,
}

fn settings(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

fn serve(args: &[&str]) -> Result<Serve, String> {
    let argv = ["prog", "serve"].iter().chain(args).copied();
    match try_parse_from::<Cli, _, _>(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Cmd::Serve(serve) => Ok(serve),
        other => panic!("parsed {other:?}"),
    }
}

fn with_file(text: &str, args: &[&str]) -> (Result<Serve, String>, String) {
    let file = settings(text);
    let path = file.path().display().to_string();
    let mut all = vec!["--config", path.as_str()];
    all.extend(args);
    (serve(&all), path)
}

#[test]
fn without_a_file_the_defaults_apply() {
    let serve = serve(&[]).expect("parses");
    assert_eq!(serve.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(serve.interval, 60);
    assert!(!serve.verbose);
}

#[test]
fn the_file_sets_what_the_command_line_does_not() {
    let (serve, _) = with_file(
        "listen = \"0.0.0.0:7\"\ndata_dir = \"/srv/x\"\ninterval = 9\nverbose = true\n",
        &[],
    );
    let serve = serve.expect("parses");
    assert_eq!(serve.listen, "0.0.0.0:7".parse().unwrap());
    assert_eq!(serve.data_dir, PathBuf::from("/srv/x"));
    assert_eq!(serve.interval, 9);
    assert!(serve.verbose);
}

#[test]
fn the_command_line_wins_over_the_file() {
    let (serve, _) = with_file(
        "listen = \"0.0.0.0:7\"\ndata-dir = \"/srv/x\"\nverbose = false\n",
        &["--listen", "10.0.0.1:8", "--verbose"],
    );
    let serve = serve.expect("parses");
    assert_eq!(serve.listen, "10.0.0.1:8".parse().unwrap());
    assert_eq!(serve.data_dir, PathBuf::from("/srv/x"));
    assert!(serve.verbose);
}

#[test]
fn an_unknown_key_is_refused_naming_the_file_key_and_settings() {
    let (serve, path) = with_file("lisen = \"0.0.0.0:7\"\n", &[]);
    let message = serve.expect_err("refused");
    for fragment in [
        path.as_str(),
        "setting `lisen`",
        "listen, data-dir, interval",
    ] {
        assert!(message.contains(fragment), "{fragment:?} not in {message}");
    }
}

#[test]
fn a_bad_value_is_refused_naming_the_file_and_key() {
    for (text, key, detail) in [
        ("interval = 500\n", "interval", "500"),
        ("listen = \"nowhere\"\n", "listen", "nowhere"),
        ("listen = [\"0.0.0.0:7\"]\n", "listen", "want a string"),
        ("verbose = \"yes\"\n", "verbose", "true or false"),
        (
            "config = \"/other.toml\"\n",
            "config",
            "cannot name another",
        ),
    ] {
        let (serve, path) = with_file(text, &[]);
        let message = serve.expect_err(text);
        for fragment in [path.as_str(), &format!("setting `{key}`"), detail] {
            assert!(message.contains(fragment), "{fragment:?} not in {message}");
        }
    }
}

#[test]
fn a_missing_or_malformed_file_is_refused() {
    let message = serve(&["--config", "/nonexistent/lockbox.toml"]).expect_err("refused");
    assert!(
        message.contains("the settings file /nonexistent/lockbox.toml cannot be read"),
        "{message}"
    );
    // At most MAX_CONFIG_BYTES are read, even of a file that is one long
    // comment.
    let mut big = vec![b'#'; super::MAX_CONFIG_BYTES as usize + 1];
    big.push(b'\n');
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(file.path(), &big).expect("write");
    let path = file.path().display().to_string();
    let message = serve(&["--config", &path]).expect_err("refused");
    assert!(
        message.contains(&format!(
            "the settings file {path} is larger than 1048576 bytes"
        )),
        "{message}"
    );
    std::fs::write(file.path(), b"listen = \"\xff\"\n").expect("write");
    let message = serve(&["--config", &path]).expect_err("refused");
    assert!(
        message.contains(&format!("the settings file {path} is not UTF-8 text")),
        "{message}"
    );
    let (serve, path) = with_file("listen = \n", &[]);
    let message = serve.expect_err("refused");
    assert!(
        message.contains(&format!("the settings file {path} is not valid TOML")),
        "{message}"
    );
}

#[test]
fn a_sibling_subcommand_uses_its_own_keys_of_the_same_file() {
    let file = settings("listen = \"0.0.0.0:7\"\ndata-dir = \"/srv/y\"\n");
    let path = file.path().display().to_string();
    let cli = try_parse_from::<Cli, _, _>(["prog", "init", "--config", path.as_str()])
        .expect("init ignores serve's keys");
    match cli.command {
        Cmd::Init(init) => assert_eq!(init.data_dir, PathBuf::from("/srv/y")),
        other => panic!("parsed {other:?}"),
    }
    // A subcommand without --config is parsed as usual.
    let cli = try_parse_from::<Cli, _, _>(["prog", "other", "--x", "1"]).expect("parses");
    assert!(matches!(cli.command, Cmd::Other { x: Some(ref x) } if x == "1"));
}

#[test]
fn command_line_errors_are_reported_as_without_a_file() {
    let (serve, _) = with_file("interval = 5\n", &["--bogus"]);
    let message = serve.expect_err("refused");
    assert!(message.contains("--bogus"), "{message}");
}
