//! consul-sync's library modules import each other in one direction. The graph is read from the
//! source: the modules reachable from `src/lib.rs` through `mod` declarations, and the `crate::`
//! and `super::` paths each refers to outside its tests. Checked: no cycle between files, and
//! every top-level module imports only from the layers below its own ([`LAYERS`]), so
//! `membership` and `reconcile` never import each other and the bottom layer imports nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules from the top down. A module may import only from layers below its own.
const LAYERS: &[&[&str]] = &[
    &["app"],
    &["membership", "reconcile", "endpoint"],
    &["consul"],
    &[
        "leader", "status", "config", "net", "metrics", "shutdown", "backoff",
    ],
];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The reader sees what it must: a file-level edge and a parent's submodule.
    assert!(
        graph["membership::watcher"].contains("membership::list"),
        "{graph:#?}"
    );
    assert!(graph["reconcile"].contains("reconcile::plan"), "{graph:#?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "consul-sync's modules import each other in a cycle: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn every_module_imports_only_from_the_layers_below() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let problems = layer_violations(&graph);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_cycle_and_an_import_upwards_are_found() {
    let graph: Graph = [
        ("metrics", &["net"][..]),
        ("net", &["membership::consul"][..]),
        ("membership::consul", &["metrics"][..]),
        ("reconcile", &["membership::list"][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_owned(), to.iter().map(|t| (*t).to_owned()).collect()))
    .collect();
    let cycle = find_cycle(&graph).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    let problems = layer_violations(&graph);
    for p in [
        "metrics imports net",
        "net imports membership",
        "reconcile imports membership",
    ] {
        assert!(problems.iter().any(|x| x.starts_with(p)), "{p}: {problems:?}");
    }
    let refs = paths_after(
        "use crate::net::{self, NetError};\nuse super::values::{Dur, Port};\nlet x = crate::a::b(1);",
    );
    assert_eq!(
        refs,
        [
            vec!["crate", "net", "self"],
            vec!["crate", "net", "NetError"],
            vec!["super", "values", "Dur"],
            vec!["super", "values", "Port"],
            vec!["crate", "a", "b"],
        ]
    );
}

/// Each library module (`membership::watcher`) and the modules it refers to.
fn module_graph(src: &Path) -> Graph {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    collect_modules(&src.join("lib.rs"), "", &mut files);
    let known: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let mut graph = Graph::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = without_tests_and_comments(&text);
        let mut to: BTreeSet<String> = submodules(&code)
            .into_iter()
            .map(|child| join(module, &child))
            .collect();
        for path in paths_after(&code) {
            let absolute = absolute(module, &path);
            if let Some(target) = longest_known(&absolute, &known) {
                if target != *module && !target.is_empty() {
                    to.insert(target);
                }
            }
        }
        if !module.is_empty() {
            graph.insert(module.clone(), to);
        }
    }
    graph
}

/// Follows `mod x;` from `file` (module `module`) to every file of the library.
fn collect_modules(file: &Path, module: &str, out: &mut BTreeMap<String, PathBuf>) {
    out.insert(module.to_owned(), file.to_owned());
    let text = std::fs::read_to_string(file).unwrap();
    // lib.rs and mod.rs hold their children beside them; `a.rs` would hold them in `a/`.
    let dir = if module.is_empty() || file.ends_with("mod.rs") {
        file.parent().unwrap().to_owned()
    } else {
        file.with_extension("")
    };
    for child in submodules(&without_tests_and_comments(&text)) {
        let flat = dir.join(format!("{child}.rs"));
        let nested = dir.join(&child).join("mod.rs");
        let path = if flat.exists() { flat } else { nested };
        assert!(path.exists(), "mod {child} of {}: no file", file.display());
        collect_modules(&path, &join(module, &child), out);
    }
}

fn join(module: &str, child: &str) -> String {
    if module.is_empty() {
        child.to_owned()
    } else {
        format!("{module}::{child}")
    }
}

/// The code before the tests module, without comments.
fn without_tests_and_comments(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names declared by `mod x;` (with any visibility).
fn submodules(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("pub ").unwrap_or(l);
            let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Every path that starts with `crate::` or `super::`, with `{a, b}` groups spread out.
fn paths_after(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let root = ["crate::", "super::"]
            .into_iter()
            .find(|r| starts_word && code[i..].starts_with(r));
        match root {
            Some(r) => {
                let mut at = i + r.len();
                let first = r.trim_end_matches(':').to_owned();
                use_tree(bytes, &mut at, vec![first], &mut out);
                i = at;
            }
            None => i += 1,
        }
    }
    out
}

/// Reads a path (or `{...}` group of paths) at `at` after `prefix`, into `out`.
fn use_tree(b: &[u8], at: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let skip_space = |at: &mut usize| {
        while *at < b.len() && b[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    loop {
        skip_space(at);
        if b.get(*at) == Some(&b'{') {
            *at += 1;
            loop {
                use_tree(b, at, prefix.clone(), out);
                skip_space(at);
                match b.get(*at) {
                    Some(b',') => *at += 1,
                    Some(b'}') => {
                        *at += 1;
                        return;
                    }
                    _ => return,
                }
                skip_space(at);
                if b.get(*at) == Some(&b'}') {
                    *at += 1;
                    return;
                }
            }
        }
        let start = *at;
        while *at < b.len() && (b[*at].is_ascii_alphanumeric() || b[*at] == b'_') {
            *at += 1;
        }
        if *at == start {
            out.push(prefix);
            return;
        }
        prefix.push(String::from_utf8_lossy(&b[start..*at]).into_owned());
        if b[*at..].starts_with(b"::") {
            *at += 2;
        } else {
            out.push(prefix);
            return;
        }
    }
}

/// `path` from the crate root; `super` is the parent of `module`.
fn absolute(module: &str, path: &[String]) -> Vec<String> {
    let mut base: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    let mut segments = path.iter().peekable();
    match segments.next().map(String::as_str) {
        Some("crate") => base.clear(),
        Some("super") => {
            base.pop();
            while segments.peek().map(|s| s.as_str()) == Some("super") {
                segments.next();
                base.pop();
            }
        }
        _ => {}
    }
    base.extend(segments.filter(|s| *s != "self").cloned());
    base
}

/// The longest prefix of `path` that names a module of the library.
fn longest_known(path: &[String], known: &BTreeSet<&str>) -> Option<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|p| known.contains(p.as_str()))
}

/// A cycle as the list of modules it passes, the first again at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut done, &mut Vec::new()))
}

/// Each import of a top-level module from its own layer or one above, and each module the
/// layers do not name.
fn layer_violations(graph: &Graph) -> Vec<String> {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&top(m).as_str()));
    let mut problems = BTreeSet::new();
    for (from, targets) in graph {
        let Some(from_layer) = layer(from) else {
            problems.insert(format!("{} is in no layer: add it to LAYERS", top(from)));
            continue;
        };
        for to in targets.iter().filter(|to| top(to) != top(from)) {
            if layer(to).is_some_and(|l| l <= from_layer) {
                problems.insert(format!(
                    "{} imports {} ({from} uses {to}): a module imports only from the layers below its own",
                    top(from),
                    top(to)
                ));
            }
        }
    }
    problems.into_iter().collect()
}
