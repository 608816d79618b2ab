//! The modules of `tandem-shards` import each other without a cycle: read
//! from the source tree, every `crate::X` (between top-level modules) and
//! `super::X::` (between the files of one directory) is an edge, and the graph
//! must be acyclic. A cycle is how two files start calling back into each
//! other; the failure names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names that follow `prefix` in `text` (identifiers).
fn names_after<'a>(text: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            names.insert(&rest[..end]);
        }
    }
    names
}

/// A cycle in `graph`, if any, as the list of its nodes.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_modules_of_shards_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 10,
        "found the sources under {}",
        src.display()
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let rel = file.strip_prefix(&src).unwrap_or(file);
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let top = parts.first().cloned().unwrap_or_default();
        for name in names_after(&text, "crate::") {
            if name != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .insert(name.to_owned());
            }
        }
        // Siblings inside a directory module (`super::` alone is the parent).
        if parts.len() >= 2 && parts.last().is_some_and(|p| p != "mod") {
            let dir = parts[..parts.len() - 1].join("/");
            let me = format!("{dir}/{}", parts[parts.len() - 1]);
            for name in names_after(&text, "super::") {
                let sibling = format!("{dir}/{name}");
                let is_module = src.join(format!("{sibling}.rs")).exists();
                if is_module && sibling != me && text.contains(&format!("super::{name}::")) {
                    graph.entry(me.clone()).or_default().insert(sibling);
                }
            }
        }
    }
    assert_eq!(find_cycle(&graph), None, "import graph: {graph:#?}");
}
