//! The layers of `src/` point one way. Reads every `crate::…` path (and `weixin_fcgi::…` in
//! `main.rs`) in `src/`, maps files to their top-level module, and fails on an import the
//! layering forbids or on any cycle between modules. Run alone: `cargo test --test layers`.
//!
//! The FastCGI transport is its own crate (`fastcgi/`), depending on neither this crate nor any
//! WeChat type: a wrong-way import there does not compile, so it needs no check here beyond
//! who may use it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level modules each module may use. `fastcgi` is the transport crate re-exported
/// by `lib.rs`; `state` (the key/value store; it logs Redis outages) sits at the bottom with
/// `wechat`, `logger` and
/// `allocator` (malloc tuning), `status` (the status page's counters) and `wxapi` (the WeChat
/// API client) and `replay` (the replay cache) on `state`; `config` checks `shared_state` with
/// `state`; `main` and `cli` sit on top.
const ALLOWED: &[(&str, &[&str])] = &[
    ("logger", &[]),
    ("query", &[]),
    ("state", &["logger"]),
    ("allocator", &[]),
    ("replay", &["state", "logger"]),
    ("status", &[]),
    ("wechat", &[]),
    ("wxapi", &["state", "wechat", "logger"]),
    ("rules", &["wechat"]),
    ("config", &["rules", "wechat", "logger", "status", "state"]),
    (
        "forward",
        &[
            "config", "rules", "wechat", "logger", "query", "state", "wxapi", "status",
        ],
    ),
    (
        "app",
        &[
            "config",
            "rules",
            "forward",
            "wechat",
            "logger",
            "query",
            "state",
            "wxapi",
            "fastcgi",
            "replay",
            "allocator",
            "status",
        ],
    ),
    (
        "cli",
        &[
            "config", "rules", "wechat", "logger", "query", "state", "wxapi", "fastcgi",
        ],
    ),
    (
        "main",
        &[
            "app",
            "cli",
            "config",
            "rules",
            "forward",
            "wechat",
            "logger",
            "query",
            "state",
            "wxapi",
            "fastcgi",
            "allocator",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/forward/dedup.rs` → `forward`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// The modules `text` refers to through `crate::NAME` (or `weixin_fcgi::NAME`), comments
/// skipped. The logging macros count as `logger`.
fn references(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        for prefix in prefixes {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                let before = rest[..i].chars().next_back();
                rest = &rest[i + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue;
                }
                let rest_trim = rest.trim_start_matches('{');
                let names: Vec<&str> = if rest.starts_with('{') {
                    // `use crate::{a, b::c}`: every first segment inside the braces.
                    let inner = rest_trim.split('}').next().unwrap_or("");
                    inner
                        .split(',')
                        .map(|s| s.trim().split("::").next().unwrap_or(""))
                        .collect()
                } else {
                    vec![
                        rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or(""),
                    ]
                };
                for name in names {
                    match name {
                        "" | "self" => {}
                        n if n.starts_with("log_") => {
                            found.insert("logger".to_string());
                        }
                        n => {
                            found.insert(n.to_string());
                        }
                    }
                }
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let prefixes: &[&str] = if module == "main" {
            &["weixin_fcgi::", "crate::"]
        } else {
            &["crate::"]
        };
        let refs = references(&text, prefixes);
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(refs.into_iter().filter(|r| *r != module));
    }
    graph
}

#[test]
fn every_import_points_down() {
    let graph = graph();
    assert!(graph.contains_key("forward") && graph.contains_key("wechat"));
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, uses) in &graph {
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{module}: a new top-level module; add it to ALLOWED"
            ));
            continue;
        };
        for used in uses {
            if !ok.contains(&used.as_str()) {
                wrong.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:?}");
}

#[test]
fn no_cycles() {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let graph = graph();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "module cycle: {}",
            cycle.unwrap_or_default().join(" -> ")
        );
    }
}

#[test]
fn the_scanner_sees_imports() {
    let refs = references(
        "use crate::{config::Config, rules};\nlet x = crate::wechat::unix_time(); // crate::app\ncrate::log_warn!(\"x\");\nuse weixin_fcgi::fastcgi::Server;",
        &["crate::", "weixin_fcgi::"],
    );
    let want: BTreeSet<String> = ["config", "rules", "wechat", "logger", "fastcgi"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want);
}
