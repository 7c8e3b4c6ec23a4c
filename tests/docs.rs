//! The documentation keeps up with the program: every option that a `--help` lists is in the man
//! page `man/weixin-fcgi.8`, and every config key of README.md's "Config reference" is in the man
//! page and in the Chinese README (README.zh-CN.md).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The man page as the words a reader sees: roff's `\-` is a plain hyphen.
fn man_page() -> String {
    repo_file("man/weixin-fcgi.8").replace("\\-", "-")
}

/// `weixin-fcgi ARGS --help` (exit 0).
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weixin-fcgi"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run weixin-fcgi --help");
    assert!(out.status.success(), "{args:?} --help: {out:?}");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The options a help text lists: each line of its OPTIONS section starts with them
/// (`-c, --config FILE   …`).
fn options(help: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut in_options = false;
    for line in help.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_options = line.trim_end() == "OPTIONS:";
            continue;
        }
        if !in_options {
            continue;
        }
        // Option names only at the start of an entry: "-c, --config FILE", "--plain".
        for word in line.split_whitespace() {
            let word = word.trim_end_matches(',');
            if word.starts_with('-') && word.len() > 1 && !word.starts_with("---") {
                found.insert(word.to_string());
            } else {
                break;
            }
        }
    }
    found
}

/// The subcommands whose `--help` is checked (each lists OPTIONS).
const COMMANDS: &[&[&str]] = &[&[], &["check"], &["send"], &["status"]];

#[test]
fn every_help_option_is_in_the_man_page() {
    let man = man_page();
    let mut missing = Vec::new();
    for cmd in COMMANDS {
        let opts = options(&help(cmd));
        assert!(opts.len() >= 2, "{cmd:?} --help lists options: {opts:?}");
        for opt in opts {
            // As a word: "--to" must not be satisfied by "--to-user".
            let present = man.match_indices(&opt).any(|(i, _)| {
                let next = man[i + opt.len()..].chars().next();
                !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            if !present {
                missing.push(format!("weixin-fcgi {} {opt}", cmd.join(" ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options missing from man/weixin-fcgi.8: {missing:?}"
    );
}

/// The keys of README.md's "Config reference": every `name` in the first column of its tables
/// (global keys, account keys, rule conditions, reply types) and in the keys column of the
/// reply table.
fn config_keys() -> BTreeSet<String> {
    let readme = repo_file("README.md");
    let start = readme
        .find("\n## Config reference")
        .expect("README.md has a Config reference");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut keys = BTreeSet::new();
    let mut reply_table = false;
    for line in section.lines() {
        if !line.starts_with('|') {
            reply_table = false;
            continue;
        }
        reply_table |= line.starts_with("| `type` | keys |");
        let cells: Vec<&str> = line.split('|').collect();
        let columns = if reply_table { 1..3 } else { 1..2 };
        for col in cells.get(columns).unwrap_or_default() {
            // `name`, `fields = { … }`, `app_id`, `aes_key`: the backticked words.
            for piece in col.split('`').skip(1).step_by(2) {
                let word = piece.split([' ', '=']).next().unwrap_or("");
                if !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    keys.insert(word.to_string());
                }
            }
        }
    }
    keys
}

#[test]
fn readme_config_keys_are_extracted() {
    let keys = config_keys();
    for k in [
        "listen",
        "workers",
        "idle_exit",
        "path",
        "token",
        "aes_key",
        "msg_type",
    ] {
        assert!(keys.contains(k), "{k} not found in {keys:?}");
    }
    for k in ["media_id", "articles", "command", "forward", "exec"] {
        assert!(keys.contains(k), "{k} not found in {keys:?}");
    }
}

fn missing_keys(doc: &str) -> Vec<String> {
    config_keys()
        .into_iter()
        .filter(|k| {
            !doc.match_indices(k.as_str()).any(|(i, _)| {
                let before = doc[..i].chars().next_back();
                let after = doc[i + k.len()..].chars().next();
                let word =
                    |c: Option<char>| matches!(c, Some(c) if c.is_ascii_alphanumeric() || c == '_');
                !word(before) && !word(after)
            })
        })
        .collect()
}

#[test]
fn every_config_key_is_in_the_man_page() {
    let missing = missing_keys(&man_page());
    assert!(
        missing.is_empty(),
        "README.md config keys missing from man/weixin-fcgi.8: {missing:?}"
    );
}

#[test]
fn every_config_key_is_in_the_chinese_readme() {
    let missing = missing_keys(&repo_file("README.zh-CN.md"));
    assert!(
        missing.is_empty(),
        "README.md config keys missing from README.zh-CN.md: {missing:?}"
    );
}

#[test]
fn the_chinese_readme_is_linked_from_the_top_of_readme() {
    let readme = repo_file("README.md");
    let top: String = readme.lines().take(5).collect::<Vec<_>>().join("\n");
    assert!(top.contains("(README.zh-CN.md)"), "{top}");
}
