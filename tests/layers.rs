//! The file tree is the architecture: each folder of `src/` is a layer, and a layer
//! imports only from layers of a lower rank, never from one above it or beside it;
//! no two modules import each other, directly or in a circle.
//!
//! The edges are every `crate::` path in the code (use lines, inline paths and
//! macro calls; comments and string literals are skipped). A path names the module
//! `layer::module` it goes to (`crate::engine::worker::Worker` -> `engine::worker`);
//! a name lib.rs re-exports at the crate root (`crate::log_limited!`) goes to the
//! module it comes from. Relative paths (`super::`, `self::`) stay inside one module
//! family, so only `super::super` is refused. The binary (`src/main.rs`,
//! `src/cli/`) is the top layer: it can only reach the library's public surface,
//! and its own modules are checked for cycles the same way.
//!
//! Run by `.ci/run` before anything else: `cargo test --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. Layers of one rank do not import each other.
const RANKS: &[(&str, u32)] = &[
    ("model", 0),
    ("base", 0),
    ("redis", 1),
    ("kafka", 1),
    ("config", 2),
    ("ops", 2),
    ("engine", 3),
    ("tools", 4),
    // The binary.
    ("cli", 5),
];

fn rank(layer: &str) -> Option<u32> {
    RANKS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code without comments, string literals and char literals (each replaced by
/// a space), so only real paths are read.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(b.len(), |n| i + n);
            out.push(' ');
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(b.len(), |n| i + n + 2);
            out.push(' ');
            i = end;
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"..." or r#"..."#
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            let end = src[body..]
                .find(&close)
                .map_or(b.len(), |n| body + n + close.len());
            out.push(' ');
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.push(' ');
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a), left as is.
            let lit = if let Some(escaped) = rest.strip_prefix("'\\") {
                escaped.find('\'').map(|n| n + 3)
            } else {
                let mut chars = rest[1..].chars();
                match (chars.next(), chars.next()) {
                    (Some(c), Some('\'')) => Some(1 + c.len_utf8() + 1),
                    _ => None,
                }
            };
            match lit {
                Some(len) => {
                    out.push(' ');
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `r"` or `r#..#"` at the start of `s` (not inside an identifier): the hashes.
fn raw_string_start(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('r').or_else(|| s.strip_prefix("br"))?;
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    rest[hashes..].starts_with('"').then_some(hashes)
}

fn ident_len(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

/// The paths written after `prefix` (`crate::`), brace groups expanded:
/// `crate::{a::b, c::{d, e}}` gives `a::b`, `c::d`, `c::e`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(n) = code[from..].find(prefix) {
        let at = from + n;
        from = at + prefix.len();
        // `$crate::` inside a macro is the same crate; `xcrate::` is not a path.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        parse_tree(&code[from..], Vec::new(), &mut out);
    }
    out
}

/// Read one use tree at the start of `s` below `base`; returns the bytes read.
fn parse_tree(s: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = base;
    let mut i = 0;
    loop {
        let t = &s[i..];
        let skip = t.len() - t.trim_start().len();
        i += skip;
        let t = &s[i..];
        if let Some(group) = t.strip_prefix('{') {
            let mut j = 0;
            loop {
                let g = &group[j..];
                let ws = g.len() - g.trim_start().len();
                j += ws;
                if group[j..].starts_with('}') {
                    j += 1;
                    break;
                }
                if group[j..].is_empty() {
                    break;
                }
                j += parse_tree(&group[j..], path.clone(), out);
                let g = &group[j..];
                let ws = g.len() - g.trim_start().len();
                j += ws;
                if group[j..].starts_with(',') {
                    j += 1;
                }
            }
            return i + 1 + j;
        }
        let n = ident_len(t);
        if n == 0 {
            // `*`, `self` handled as the path so far.
            if t.starts_with('*') {
                i += 1;
            }
            if !path.is_empty() {
                out.push(path);
            }
            return i;
        }
        let ident = &t[..n];
        i += n;
        if ident != "self" {
            path.push(ident.to_owned());
        }
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            // ` as x` and anything after does not change where it goes.
            if !path.is_empty() {
                out.push(path);
            }
            return i;
        }
    }
}

/// The module (`layer::module`, or `config`) a file of the library is.
fn node_of_lib_file(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts.truncate(2);
    parts
}

/// The module a path goes to: `layer::module` when that is a file or folder of
/// the layer, else the layer itself (`config`, or an item of a layer's mod.rs).
fn module_of(src: &Path, path: &[String]) -> Vec<String> {
    if let [layer, module, ..] = path {
        let dir = src.join(layer);
        if dir.join(format!("{module}.rs")).is_file() || dir.join(module).join("mod.rs").is_file() {
            return vec![layer.clone(), module.clone()];
        }
    }
    path.iter().take(1).cloned().collect()
}

struct Graph {
    /// node -> nodes it imports, with the file that does, for the report.
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

impl Graph {
    fn add(&mut self, from: &str, to: &str, file: &str) {
        if from != to {
            self.edges
                .entry(from.to_owned())
                .or_default()
                .entry(to.to_owned())
                .or_insert_with(|| file.to_owned());
            self.edges.entry(to.to_owned()).or_default();
        }
    }

    /// Every cycle: the modules of each strongly connected part (Tarjan), and one
    /// loop through them.
    fn cycles(&self) -> Vec<(Vec<String>, Vec<String>)> {
        struct T<'g> {
            g: &'g Graph,
            index: BTreeMap<&'g str, usize>,
            low: BTreeMap<&'g str, usize>,
            stack: Vec<&'g str>,
            on: BTreeSet<&'g str>,
            parts: Vec<Vec<&'g str>>,
        }
        fn visit<'g>(t: &mut T<'g>, v: &'g str) {
            let n = t.index.len();
            t.index.insert(v, n);
            t.low.insert(v, n);
            t.stack.push(v);
            t.on.insert(v);
            for w in t.g.edges[v].keys() {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if t.low[v] == t.index[v] {
                let mut part = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on.remove(w);
                    part.push(w);
                    if w == v {
                        break;
                    }
                }
                if part.len() > 1 {
                    t.parts.push(part);
                }
            }
        }
        let mut t = T {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            parts: Vec::new(),
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v.as_str()) {
                visit(&mut t, v);
            }
        }
        // One loop through each part: walk from its smallest node, within the part,
        // until a node repeats.
        t.parts
            .into_iter()
            .map(|part| {
                let inside: BTreeSet<&str> = part.iter().copied().collect();
                let start = *inside.iter().next().expect("non-empty");
                let mut path = vec![start];
                let mut at = start;
                loop {
                    let next = self.edges[at]
                        .keys()
                        .map(String::as_str)
                        .find(|w| inside.contains(w))
                        .expect("a part's node has an edge inside it");
                    if let Some(k) = path.iter().position(|p| *p == next) {
                        let mut cycle: Vec<String> =
                            path[k..].iter().map(|s| s.to_string()).collect();
                        cycle.push(next.to_owned());
                        let members = inside.iter().map(|s| s.to_string()).collect();
                        return (members, cycle);
                    }
                    path.push(next);
                    at = next;
                }
            })
            .collect()
    }
}

/// Names lib.rs brings into the crate root from a module (`pub(crate) use
/// crate::base::log_limit::log_limited;`): name -> module.
fn root_aliases(lib: &str) -> BTreeMap<String, Vec<String>> {
    let code = code_only(lib);
    let mut aliases = BTreeMap::new();
    for stmt in code.split(';') {
        let s = stmt.trim_start();
        let Some(at) = s.find("use crate::") else {
            continue;
        };
        // Only root-level uses (not inside a facade `pub mod x { ... }`).
        if s[..at].contains('{') {
            continue;
        }
        for p in paths_after(&s[at..], "crate::") {
            if let Some((name, module)) = p.split_last() {
                aliases.insert(name.clone(), module.to_vec());
            }
        }
    }
    aliases
}

/// Every problem found: upward or sideways imports, cycles, unknown paths.
fn problems(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let aliases = root_aliases(&lib);
    let mut problems = Vec::new();
    let mut lib_graph = Graph {
        edges: BTreeMap::new(),
    };
    let mut bin_graph = Graph {
        edges: BTreeMap::new(),
    };
    // Every module lib.rs declares is a ranked layer.
    for stmt in code_only(&lib).split(';') {
        let s = stmt.trim();
        if let Some(name) = s
            .strip_prefix("mod ")
            .or_else(|| s.strip_prefix("pub mod "))
            .or_else(|| s.strip_prefix("pub(crate) mod "))
            .filter(|n| ident_len(n) == n.len())
            && rank(name).is_none()
        {
            problems.push(format!(
                "src/lib.rs: layer `{name}` has no rank in tests/layers.rs (and README)"
            ));
        }
    }
    for file in &files {
        let rel = file.strip_prefix(src).expect("under src");
        let shown = format!("src/{}", rel.display());
        let text = std::fs::read_to_string(file).expect("readable source");
        let code = code_only(&text);
        if code.contains("super::super") {
            problems.push(format!(
                "{shown}: `super::super` reaches out of its module family; use a crate:: path"
            ));
        }
        let first = rel
            .iter()
            .next()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let in_bin = rel == Path::new("main.rs") || first == "cli";
        if in_bin {
            // The binary's own modules: `crate::` is the binary.
            let from = if rel == Path::new("main.rs") {
                "main".to_owned()
            } else {
                node_of_lib_file(rel).join("::")
            };
            bin_graph.edges.entry(from.clone()).or_default();
            for p in paths_after(&code, "crate::") {
                let to: Vec<String> = p.into_iter().take(2).collect();
                bin_graph.add(&from, &to.join("::"), &shown);
            }
            continue;
        }
        if rel == Path::new("lib.rs") {
            continue; // the surface: it re-exports from every layer
        }
        let from = node_of_lib_file(rel);
        let from_layer = from[0].as_str();
        let Some(from_rank) = rank(from_layer) else {
            problems.push(format!(
                "{shown}: `{from_layer}` is not a layer with a rank in tests/layers.rs"
            ));
            continue;
        };
        let from = from.join("::");
        lib_graph.edges.entry(from.clone()).or_default();
        for p in paths_after(&code, "crate::") {
            let target: Vec<String> = match rank(&p[0]) {
                Some(_) => module_of(src, &p),
                None => match aliases.get(&p[0]) {
                    Some(module) => module_of(src, module),
                    None => {
                        problems.push(format!(
                            "{shown}: crate::{} is neither in a layer nor re-exported by lib.rs",
                            p.join("::")
                        ));
                        continue;
                    }
                },
            };
            let to_layer = target[0].as_str();
            let Some(to_rank) = rank(to_layer) else {
                problems.push(format!(
                    "{shown}: crate::{} goes to `{to_layer}`, which is not a ranked layer",
                    p.join("::")
                ));
                continue;
            };
            let to = target.join("::");
            if to_layer != from_layer {
                if to_rank > from_rank {
                    problems.push(format!(
                        "{shown}: {from} imports {to}, a layer above it ({from_layer} is rank \
                         {from_rank}, {to_layer} rank {to_rank})"
                    ));
                } else if to_rank == from_rank {
                    problems.push(format!(
                        "{shown}: {from} imports {to}, a layer beside it (both rank {from_rank})"
                    ));
                }
            }
            lib_graph.add(&from, &to, &shown);
        }
    }
    for (graph, what) in [(&lib_graph, "library"), (&bin_graph, "binary")] {
        for (members, cycle) in graph.cycles() {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], graph.edges[&w[0]][&w[1]]))
                .collect();
            problems.push(format!(
                "import cycle in the {what} among {}: {}\n    {}",
                members.join(", "),
                cycle.join(" -> "),
                steps.join("\n    ")
            ));
        }
    }
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    problems
}

#[test]
fn layers_import_only_downwards_and_nothing_imports_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = problems(&src);
    assert!(
        problems.is_empty(),
        "the module graph breaks the layering ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The check itself: it sees a cycle, an upward and a sideways import, in any
/// form a path can take, and nothing in comments or strings.
#[test]
fn the_check_finds_what_it_must_and_only_that() {
    let dir = std::env::temp_dir().join(format!("waitroom-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write(
        "lib.rs",
        "mod model;\nmod redis;\nmod kafka;\nmod engine;\n\
         pub(crate) use crate::model::log::log_it;\n",
    );
    write(
        "model/keys.rs",
        "// crate::engine::worker in a comment\nconst S: &str = \"crate::engine::x\";\n\
         fn f() { crate::log_it!(); let c = '\"'; }\n",
    );
    write("model/log.rs", "");
    write(
        "redis/store.rs",
        "use crate::{model::keys::Keys, engine::worker::{self, Worker}};\n",
    );
    write(
        "redis/retry.rs",
        "fn f() { crate::kafka::publisher::send(); }\n",
    );
    write("kafka/publisher.rs", "");
    write(
        "engine/worker.rs",
        "use crate::redis::store;\nfn g() { crate::engine::delivery::go(); }\n",
    );
    write("engine/delivery.rs", "use crate::engine::worker::Worker;\n");
    write("engine/refill.rs", "fn h() { crate::nowhere::x(); }\n");
    let found = problems(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    assert!(
        has("redis::store imports engine::worker, a layer above it"),
        "{found:#?}"
    );
    assert!(
        has("redis::retry imports kafka::publisher, a layer beside it"),
        "{found:#?}"
    );
    assert!(
        has("import cycle in the library among engine::delivery, engine::worker, redis::store: "),
        "{found:#?}"
    );
    assert!(has("crate::nowhere::x is neither"), "{found:#?}");
    assert!(
        !found.iter().any(|p| p.starts_with("src/model/keys.rs")),
        "comments, strings, chars and the root macro alias are not edges: {found:#?}"
    );
}

/// The README's source layout names every file of `src/`, and names no file that
/// is not there: the table is the tree.
#[test]
fn the_readme_source_layout_is_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let tree: BTreeSet<String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root).expect("under the crate");
            rel.to_string_lossy().replace('\\', "/")
        })
        .collect();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let start = readme
        .find("Source layout.")
        .expect("README has a source layout section");
    let section = &readme[start..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let named: BTreeSet<String> = section[..end]
        .split('`')
        .filter(|w| w.starts_with("src/") && w.ends_with(".rs"))
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = tree.difference(&named).collect();
    let stale: Vec<&String> = named.difference(&tree).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README source layout: files not named there: {missing:?}; named but not in src/: {stale:?}"
    );
}
