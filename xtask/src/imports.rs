//! `cargo xtask imports`: the module graph of `enforcer/src`, read from the `crate::`,
//! `super::` and `self::` paths in the code (test-only modules left out). Fails on a
//! cycle between files, on a cycle between the top-level modules, or on `policy/`
//! importing from outside itself and the clock (it is the pure stage). Also fails on a
//! file in `enforcer/src` longer than `MAX_LINES`: past that, a file mixes concerns.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{bail, Context as _};

/// What `policy/` may import besides itself: leaves with no host I/O.
const POLICY_MAY_USE: &[&str] = &["policy", "clock"];

/// The longest a source file in `enforcer/src` may be.
const MAX_LINES: usize = 600;

pub fn imports() -> anyhow::Result<()> {
    let src = crate::workspace_root().join("enforcer/src");
    let mut files = BTreeMap::new();
    collect(&src, &src, &mut files)?;
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let test_only = test_only_modules(&files);

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        if test_only.iter().any(|t| module.starts_with(t)) {
            continue;
        }
        let deps = graph.entry(join(module)).or_default();
        for path in paths(&strip(text)) {
            let Some(abs) = resolve(module, &path) else {
                continue;
            };
            let target = longest_module(&modules, &abs);
            if target != *module && !target.is_empty() {
                deps.insert(join(&target));
            }
        }
    }

    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut top_graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in &graph {
        let entry = top_graph.entry(top(m)).or_default();
        for d in deps {
            if top(d) != top(m) {
                entry.insert(top(d));
            }
        }
    }

    println!("top-level modules:");
    for (m, deps) in &top_graph {
        println!(
            "  {m:<10} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    println!("files:");
    for (m, deps) in &graph {
        println!(
            "  {m} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }

    let mut problems = Vec::new();
    for (m, deps) in &graph {
        if top(m) == "policy" {
            for d in deps
                .iter()
                .filter(|d| !POLICY_MAY_USE.contains(&top(d).as_str()))
            {
                problems.push(format!(
                    "{m} imports {d}: policy/ imports only {POLICY_MAY_USE:?}"
                ));
            }
        }
    }
    for cycle in cycles(&graph).into_iter().chain(cycles(&top_graph)) {
        problems.push(format!("cycle: {}", cycle.join(" -> ")));
    }
    for (path, lines) in line_counts(&src)? {
        if lines > MAX_LINES {
            problems.push(format!(
                "{} has {lines} lines: split it along its concerns (at most {MAX_LINES})",
                path.display()
            ));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} problem(s)", problems.len());
    }
    println!("no cycles; policy/ imports only {POLICY_MAY_USE:?}; no file over {MAX_LINES} lines");
    Ok(())
}

/// Every `.rs` file under `dir` with its line count.
fn line_counts(dir: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, usize)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(line_counts(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push((path, text.lines().count()));
        }
    }
    Ok(out)
}

/// Module path (e.g. `["policy", "lint"]`, `[]` for the crate root) -> source text.
fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<String>, String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root)?.with_extension("");
        let mut module: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            module.pop();
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        out.entry(module).or_default().push_str(&text);
    }
    Ok(())
}

/// Modules declared `#[cfg(test)] mod name;` in another file.
fn test_only_modules(files: &BTreeMap<Vec<String>, String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (module, text) in files {
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line == "#[cfg(test)]" {
                if let Some(name) = lines
                    .next()
                    .and_then(|l| l.strip_prefix("mod "))
                    .and_then(|l| l.strip_suffix(';'))
                {
                    let mut m = module.clone();
                    m.push(name.to_string());
                    out.push(m);
                }
            }
        }
    }
    out
}

/// The text without comments and without inline `#[cfg(test)] mod x { ... }` blocks.
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i64> = None;
    let mut depth = 0i64;
    let mut pending_test = false;
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        let trimmed = code.trim();
        if trimmed == "#[cfg(test)]" {
            pending_test = true;
            continue;
        }
        if pending_test && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            skip_depth = Some(depth);
        }
        pending_test = false;
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        match skip_depth {
            Some(d) if depth <= d => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(code);
                out.push('\n');
            }
        }
    }
    out
}

/// Every path starting with `crate::`, `super::` or `self::`, with `{a, b::c}` groups
/// expanded.
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let boundary = at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':');
            if !boundary {
                continue;
            }
            let head = start.trim_end_matches("::");
            tree(&text[at + head.len()..], vec![head.to_string()], &mut out);
        }
    }
    out
}

/// Reads `a::b::{c, d::e}` after a prefix, pushing each full path.
fn tree(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut i = 0;
    let b = rest.as_bytes();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            path.push(rest[start..i].to_string());
        }
        if rest[i..].starts_with("::{") {
            i += 3;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                i += tree(&rest[i..], path.clone(), out);
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
            }
        }
        if rest[i..].starts_with("::") {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// The absolute module path a `crate::`/`super::`/`self::` path names.
fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => rest = &path[1..],
        "self" => {
            base = module.to_vec();
            rest = &path[1..];
        }
        "super" => {
            base = module.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

fn longest_module(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

fn join(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// One cycle per strongly connected component with more than one node.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut seen_in_cycle = BTreeSet::new();
    for start in graph.keys() {
        if seen_in_cycle.contains(start) {
            continue;
        }
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut visited = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    seen_in_cycle.extend(path.iter().cloned());
                    out.push(cycle);
                    stack.clear();
                    break;
                }
                if visited.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_expand() {
        let p = paths("use crate::{\n    a::b,\n    c::{d, e::f},\n};\nlet x = super::g::h(1);");
        let s: Vec<String> = p.iter().map(|p| p.join("::")).collect();
        assert_eq!(
            s,
            [
                "crate::a::b",
                "crate::c::d",
                "crate::c::e::f",
                "super::g::h"
            ]
        );
    }

    #[test]
    fn finds_a_cycle() {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("a".into());
        g.entry("c".into()).or_default().insert("a".into());
        assert_eq!(cycles(&g), [vec!["a", "b", "a"]]);
    }

    #[test]
    fn test_blocks_are_left_out() {
        let s = strip("use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\nuse crate::c; // crate::d\n");
        assert_eq!(paths(&s).len(), 2);
    }
}
