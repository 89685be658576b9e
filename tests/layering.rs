//! The module graph of `src/` has no cycle: no module imports one that imports it back
//! (directly or through others), so each layer can be read, tested and changed below the
//! ones that use it. A child module using its parent's items is not an edge (the parent
//! declares the child); everything else is: `crate::` paths, `super::` paths that reach a
//! sibling or a cousin, in `use` declarations and in code alike. Test code is left out.
//!
//! The graph is read from the source text (paths, not name resolution), which is what a
//! reader follows too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its path below the crate root (`["broker", "queue"]`; the root is empty).
type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a file holds only tests.
fn is_test_file(file: &Path) -> bool {
    let name = file.file_stem().unwrap().to_string_lossy();
    name == "tests" || name.ends_with("_tests") || name == "test_rig"
}

/// The file's code without comments and without its `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    let mut skip_depth: Option<i64> = None;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(depth) = skip_depth.as_mut() {
            *depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            if *depth <= 0 {
                skip_depth = None;
            }
            continue;
        }
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.contains('{'))
        {
            let next = lines.next().unwrap();
            let depth = next.matches('{').count() as i64 - next.matches('}').count() as i64;
            if depth > 0 {
                skip_depth = Some(depth);
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path in `code` that starts at `crate`, `super` or `self`, as segments (groups in
/// braces expanded), with the module it starts from resolved.
fn paths_in(code: &str, here: &Module) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0
            || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        if starts_word {
            for root in ["crate::", "super::", "self::"] {
                let rc: Vec<char> = root.chars().collect();
                if bytes[i..].starts_with(&rc) {
                    let mut base: Vec<String> = match root {
                        "crate::" => Vec::new(),
                        "self::" => here.clone(),
                        _ => here[..here.len().saturating_sub(1)].to_vec(),
                    };
                    let mut j = i + rc.len();
                    // Further `super::`s.
                    while bytes[j..].starts_with(&"super::".chars().collect::<Vec<_>>()) {
                        base.pop();
                        j += "super::".len();
                    }
                    let (paths, end) = parse_tail(&bytes, j);
                    for p in paths {
                        let mut full = base.clone();
                        full.extend(p);
                        out.push(full);
                    }
                    i = end;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Parses `a::b::{c, d::e}` from `at`: the paths it names, and where it ends.
fn parse_tail(s: &[char], mut at: usize) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    loop {
        let start = at;
        while at < s.len() && (s[at].is_alphanumeric() || s[at] == '_') {
            at += 1;
        }
        if at > start {
            segments.push(s[start..at].iter().collect::<String>());
        }
        if at + 2 <= s.len() && s[at] == ':' && s[at + 1] == ':' {
            at += 2;
            if at < s.len() && s[at] == '{' {
                // A group: each item extends the prefix.
                at += 1;
                let mut out = Vec::new();
                loop {
                    while at < s.len() && (s[at].is_whitespace() || s[at] == ',') {
                        at += 1;
                    }
                    if at >= s.len() || s[at] == '}' {
                        return (out, at + 1);
                    }
                    let (items, end) = parse_tail(s, at);
                    for item in items {
                        let mut full = segments.clone();
                        full.extend(item);
                        out.push(full);
                    }
                    // Skip `as x` and anything up to the next item.
                    at = end;
                    while at < s.len() && s[at] != ',' && s[at] != '}' {
                        at += 1;
                    }
                }
            }
            continue;
        }
        return (vec![segments], at);
    }
}

/// The longest module that `path` starts with.
fn resolve(path: &[String], modules: &BTreeSet<Module>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !is_test_file(f));
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let here = module_of(&src, file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let targets = edges.entry(here.clone()).or_default();
        for path in paths_in(&code, &here) {
            let to = resolve(&path, &modules);
            // Itself, an ancestor (whose items a child may use) or the root: no edge.
            if to.is_empty() || here.starts_with(&to) {
                continue;
            }
            targets.insert(to);
        }
    }
    edges
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// A cycle through `start`, if there is one.
fn cycle_from(edges: &BTreeMap<Module, BTreeSet<Module>>, start: &Module) -> Option<Vec<Module>> {
    // Depth-first, with the path; the graph has a few dozen nodes.
    let mut stack: Vec<(Module, Vec<Module>)> = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in edges.get(&node).into_iter().flatten() {
            if next == start {
                return Some(path);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let edges = graph();
    assert!(
        edges.len() > 40,
        "the graph was not read ({} modules)",
        edges.len()
    );
    let mut cycles = Vec::new();
    for module in edges.keys() {
        if let Some(cycle) = cycle_from(&edges, module) {
            let names: Vec<String> = cycle.iter().map(name).collect();
            cycles.push(format!("{} -> {}", names.join(" -> "), name(module)));
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn layers_import_only_downwards() {
    // Each top-level module may use only those listed before it.
    const LAYERS: [&str; 9] = [
        "proto", "store", "cluster", "broker", "server", "admin", "config", "perf", "node",
    ];
    let rank = |m: &Module| {
        LAYERS
            .iter()
            .position(|l| m.first().is_some_and(|f| f == l))
    };
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        let Some(r) = rank(&from) else { continue };
        for to in targets {
            if rank(&to).is_some_and(|t| t > r) {
                wrong.push(format!("{} uses {}", name(&from), name(&to)));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_the_edges_that_exist() {
    // The graph reader itself: a path to a sibling is an edge, grouped paths expand, a
    // path to a parent is none.
    let here = vec!["server".to_string(), "core".to_string()];
    let paths = paths_in(
        "use super::storage::{self, JobSender};\nuse crate::broker::{Broker, admin::AdminId};\nlet x = super::Clock;",
        &here,
    );
    let modules: BTreeSet<Module> = [
        vec![],
        vec!["server".into()],
        vec!["server".into(), "storage".into()],
        vec!["server".into(), "core".into()],
        vec!["broker".into()],
        vec!["broker".into(), "admin".into()],
    ]
    .into_iter()
    .collect();
    let resolved: BTreeSet<String> = paths.iter().map(|p| name(&resolve(p, &modules))).collect();
    assert_eq!(
        resolved,
        ["broker", "broker::admin", "server", "server::storage"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn the_broker_uses_its_own_hash_map() {
    // `broker::HashMap` is foldhash, seeded per process and fixed in the simulator; std's
    // SipHash with a random state is slower on the hot paths and makes iteration orders
    // differ from one process to the next.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/broker");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for line in code.lines() {
            let std_map = line.contains("std::collections::")
                && line.contains("HashMap")
                && !line.contains("pub type HashMap<K, V>");
            if std_map {
                found.push(format!("{}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "std's HashMap in the broker:\n{}",
        found.join("\n")
    );
}
