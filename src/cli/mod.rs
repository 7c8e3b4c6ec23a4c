//! Subcommands that run instead of the server: `weixin-fcgi send` (play WeChat's server against
//! a responder), `weixin-fcgi check` (validate a config and print what it does) and
//! `weixin-fcgi status` (print a running responder's status page).
//!
//! Each returns an exit status: 0 success, 1 failure (refused request, bad reply, invalid
//! config, no answer), 2 usage error.

pub mod check;
pub mod send;
pub mod status;

use std::process::ExitCode;

/// Exit status of a usage error (same as the server's).
const USAGE_ERROR: u8 = 2;

/// Command-line words split into `--flag value` pairs, switches and positionals.
///
/// Accepts `--flag value` and `--flag=value`; `--` ends the flags. Flags that take a value are
/// named by the caller, so a positional can never be swallowed by a switch.
struct Args {
    /// (flag, value) in order; switches have `None`.
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

impl Args {
    fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Args, String> {
        let mut out = Args {
            flags: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                out.positional.extend(it.by_ref().cloned());
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                out.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            if with_value.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                out.flags.push((name.to_string(), Some(value)));
            } else if switches.contains(&name) && inline.is_none() {
                out.flags.push((name.to_string(), None));
            } else {
                return Err(format!("unknown option {arg:?} (see --help)"));
            }
        }
        Ok(out)
    }

    /// The last value given for `name`.
    fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }
}

/// `n` random ASCII digits from the OS generator (first digit non-zero).
fn random_digits(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| format!("no OS randomness: {e}"))?;
    Ok(buf
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let d = if i == 0 { 1 + b % 9 } else { b % 10 };
            char::from(b'0' + d)
        })
        .collect())
}

/// Prints a usage error and returns status 2.
fn usage_error(cmd: &str, msg: &str) -> ExitCode {
    eprintln!("weixin-fcgi {cmd}: {msg}");
    ExitCode::from(USAGE_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn parses_flags_values_and_positionals() {
        let a = Args::parse(
            &words(&["--to", "x.sock", "text", "--raw", "--from=o1", "--", "--hi"]),
            &["--to", "--from"],
            &["--raw"],
        )
        .unwrap();
        assert_eq!(a.value("--to"), Some("x.sock"));
        assert_eq!(a.value("--from"), Some("o1"));
        assert!(a.has("--raw"));
        assert_eq!(a.positional, ["text", "--hi"]);
        assert!(Args::parse(&words(&["--to"]), &["--to"], &[]).is_err());
        assert!(Args::parse(&words(&["--nope"]), &["--to"], &[]).is_err());
        assert!(Args::parse(&words(&["--raw=1"]), &[], &["--raw"]).is_err());
    }

    #[test]
    fn random_digits_are_digits() {
        let d = random_digits(19).unwrap();
        assert_eq!(d.len(), 19);
        assert!(d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'));
    }
}
