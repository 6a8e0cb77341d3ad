//! The layering of docs/ARCHITECTURE.md, kept by a test that reads `src/`
//! (as rust-analyzer's tidy tests do): the leaves never import `pipeline`,
//! `cli` or `error`; only `cli/` prints; no import circle between top-level
//! modules; no product file past the size limit without its reason written
//! at its top.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The modules that compose: everything else is a leaf.
const COMPOSERS: [&str; 3] = ["cli", "pipeline", "error"];

/// Lines of product code (before the unit tests) a file may hold without
/// saying why at its top.
const SIZE_LIMIT: usize = 600;

/// The line a long file's top must carry, followed by its reason.
const SIZE_REASON: &str = "//! Why over 600 lines:";

/// Files outside `cli/` that may print, each with why.
const MAY_PRINT: [(&str, &str); 1] = [(
    "envelope/keys.rs",
    "an age plugin's message (\"touch your token\") must reach the person during decryption",
)];

struct File {
    /// Relative to `src/`, with `/`.
    rel: String,
    /// The top-level module it belongs to (`pipeline` for `pipeline/x.rs`).
    module: String,
    text: String,
}

fn sources() -> Vec<File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p: PathBuf = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let first = rel.split('/').next().unwrap();
                let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
                out.push(File {
                    text: fs::read_to_string(&p).unwrap(),
                    rel,
                    module,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    assert!(out.len() > 20, "src/ not found or nearly empty");
    out
}

/// The product code of a file: what comes before its unit tests, comments
/// dropped.
fn product(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// The top-level modules a file names through `crate::` (in paths and in
/// `use crate::{a, b::c}` groups).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in product(text) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `coffer_crate::`, not ours
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    out.insert(first_segment(item.trim()));
                }
            } else {
                out.insert(first_segment(rest));
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn first_segment(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn graph(files: &[File]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files
        .iter()
        .filter(|f| f.rel != "lib.rs" && f.rel != "main.rs")
        .map(|f| f.module.clone())
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        if !modules.contains(&f.module) {
            continue;
        }
        let deps = g.entry(f.module.clone()).or_default();
        for m in imports(&f.text) {
            // Items of the crate root (`crate::cli_chain`) are no module.
            if m != f.module && modules.contains(&m) {
                deps.insert(m);
            }
        }
    }
    g
}

#[test]
fn leaves_never_import_pipeline_cli_or_error() {
    let mut wrong = Vec::new();
    for f in sources() {
        if COMPOSERS.contains(&f.module.as_str()) || f.rel == "lib.rs" || f.rel == "main.rs" {
            continue;
        }
        for m in imports(&f.text) {
            if COMPOSERS.contains(&m.as_str()) {
                wrong.push(format!("src/{} imports crate::{m}", f.rel));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a leaf reaches up (leaves own their errors and are composed by pipeline/):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn error_composes_leaves_only() {
    let files = sources();
    let g = graph(&files);
    let deps = &g["error"];
    let wrong: Vec<_> = deps
        .iter()
        .filter(|m| m.as_str() == "pipeline" || m.as_str() == "cli")
        .collect();
    assert!(wrong.is_empty(), "error.rs imports {wrong:?}");
}

#[test]
fn only_cli_prints() {
    let mut wrong = Vec::new();
    for f in sources() {
        if f.module == "cli" || f.rel == "main.rs" {
            continue;
        }
        if MAY_PRINT.iter().any(|(rel, _)| *rel == f.rel) {
            continue;
        }
        for (n, line) in product(&f.text).iter().enumerate() {
            for mac in ["println!", "eprintln!", "print!", "eprint!", "dbg!"] {
                let hit = line.match_indices(mac).any(|(i, _)| {
                    !line[..i]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if hit {
                    wrong.push(format!(
                        "src/{} (code line {}): {}",
                        f.rel,
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "only cli/ prints; return what to say instead:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let g = graph(&sources());
    // Tarjan would name every circle; one is enough to fail, and a path
    // back to the start names it.
    let mut circles = Vec::new();
    for start in g.keys() {
        let mut path = vec![start.clone()];
        if let Some(c) = back_to(&g, start, &mut path, &mut BTreeSet::new()) {
            circles.push(c.join(" → "));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles between top-level modules:\n{}",
        circles.join("\n")
    );
}

fn back_to(
    g: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let here = path.last().unwrap().clone();
    for next in g.get(&here).into_iter().flatten() {
        if next == start {
            let mut c = path.clone();
            c.push(start.to_owned());
            return Some(c);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = back_to(g, start, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn long_files_say_why() {
    let mut wrong = Vec::new();
    for f in sources() {
        let lines = f
            .text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        if lines <= SIZE_LIMIT {
            continue;
        }
        let reasoned = f
            .text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .any(|l| {
                l.strip_prefix(SIZE_REASON)
                    .is_some_and(|r| r.trim().len() > 20)
            });
        if !reasoned {
            wrong.push(format!("src/{}: {lines} lines before its tests", f.rel));
        }
    }
    assert!(
        wrong.is_empty(),
        "split these, or say at the top why not (`{SIZE_REASON} …`):\n{}",
        wrong.join("\n")
    );
}

/// The checks above read what they should: a leaf that imports pipeline,
/// a circle, a print and a long file are each found in made-up sources.
#[test]
fn the_checks_catch_what_they_are_for() {
    assert_eq!(
        imports("use crate::pipeline::job;\nuse crate::{error::Error, store};\n"),
        ["error", "pipeline", "store"].map(String::from).into()
    );
    assert!(imports("// use crate::pipeline;\n").is_empty());
    assert!(imports("#[cfg(test)]\nmod tests { use crate::cli; }\n").is_empty());
    let files = vec![
        File {
            rel: "a.rs".into(),
            module: "a".into(),
            text: "use crate::b::X;".into(),
        },
        File {
            rel: "b/mod.rs".into(),
            module: "b".into(),
            text: "use crate::a::Y;".into(),
        },
    ];
    let g = graph(&files);
    let mut path = vec!["a".to_owned()];
    assert_eq!(
        back_to(&g, "a", &mut path, &mut BTreeSet::new()),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
