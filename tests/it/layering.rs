//! Dependencies run one way. This reads `src/`, builds the graph of `crate::`
//! paths between its files (each `.rs` file is a node; a path resolves to the
//! deepest module file that exists, so `crate::store::postgres::X` is
//! `store/postgres.rs` and `crate::store::X` is `store/mod.rs`), and fails,
//! listing every violation, on an import cycle or a broken layering rule.
//! The binary's files (`main.rs` and the modules it declares) resolve
//! `crate::` in the binary and `herald::` in the library.
//!
//! The rules match by path so they hold wherever a destination kind's
//! files live: a connector is any file under a `connector/` folder or whose
//! name ends in `connector` (`kinds/slack/connector.rs`), the mock is any
//! file under `mock/` or whose name ends in `mock` (`kinds/slack/mock.rs`).
//! Test-only code (`#[cfg(test)] mod tests { .. }` inside a file) is left
//! out: it is not part of what the crate builds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// A file's path under `src/`, with `/` separators.
type Node = String;

/// One layering rule: files matching `from` must not use files matching
/// `forbidden`.
struct Rule {
    name: &'static str,
    from: fn(&str) -> bool,
    forbidden: fn(&str) -> bool,
}

fn is_under(path: &str, folder: &str) -> bool {
    path == format!("{folder}.rs") || path.starts_with(&format!("{folder}/"))
}

fn file_stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".rs").unwrap_or(name)
}

fn has_folder(path: &str, folder: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    parts.contains(&folder)
}

fn is_domain(path: &str) -> bool {
    is_under(path, "domain")
}

fn is_store(path: &str) -> bool {
    is_under(path, "store")
}

fn is_dispatch(path: &str) -> bool {
    is_under(path, "dispatch")
}

/// The config file's types: `config.rs` (or a `config/` folder), and a
/// kind's own `config.rs` wherever its folder is.
fn is_config(path: &str) -> bool {
    is_under(path, "config") || file_stem(path) == "config" || has_folder(path, "config")
}

fn is_connector(path: &str) -> bool {
    has_folder(path, "connector") || file_stem(path).ends_with("connector")
}

fn is_mock(path: &str) -> bool {
    has_folder(path, "mock") || file_stem(path).ends_with("mock")
}

fn is_engine_for_the_mock(path: &str) -> bool {
    is_dispatch(path)
        || is_store(path)
        || is_connector(path)
        || is_under(path, "api")
        || is_under(path, "server")
}

fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "the domain uses nothing of the crate but itself (not even the clock)",
            from: is_domain,
            forbidden: |to| !is_domain(to),
        },
        Rule {
            name: "the store uses neither the dispatcher nor the config file's types",
            from: is_store,
            forbidden: |to| is_dispatch(to) || is_config(to),
        },
        Rule {
            name: "the connectors do not use the store",
            from: is_connector,
            forbidden: is_store,
        },
        Rule {
            name: "the mock uses none of the dispatcher, the store, the connectors, the API, the server",
            from: is_mock,
            forbidden: is_engine_for_the_mock,
        },
    ]
}

/// An edge: the file used, and the first path that used it (for messages).
type Edges = BTreeMap<Node, BTreeMap<Node, String>>;

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<Node>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(root).expect("under src");
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The file a module path names, if it exists: `a/b.rs` or `a/b/mod.rs`;
/// the empty path is the crate root.
fn module_file(files: &BTreeSet<Node>, segments: &[String], root_file: &str) -> Option<Node> {
    if segments.is_empty() {
        return Some(root_file.to_owned());
    }
    let joined = segments.join("/");
    [format!("{joined}.rs"), format!("{joined}/mod.rs")]
        .into_iter()
        .find(|candidate| files.contains(candidate))
}

/// The deepest module file a path's prefix names.
fn resolve(files: &BTreeSet<Node>, segments: &[String], root_file: &str) -> Node {
    (0..=segments.len())
        .rev()
        .find_map(|len| module_file(files, &segments[..len], root_file))
        .expect("the crate root exists")
}

/// Source without comments and without inline `#[cfg(test)] mod .. { .. }`.
fn code_only(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            code.push('\n');
            continue;
        }
        code.push_str(without_trailing_comment(line));
        code.push('\n');
    }
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_inline_module = trimmed.starts_with("mod ")
            && trimmed
                .find(['{', ';'])
                .is_some_and(|end| trimmed.as_bytes()[end] == b'{');
        if !is_inline_module {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = after.find('{').expect("checked above");
        let mut depth = 0usize;
        let mut end = after.len();
        for (index, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + index + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The line up to a `//` that is outside a string literal (`"http://"` is
/// not a comment, nor is `'"'` the start of a string).
fn without_trailing_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if in_string => at += 1,
            b'\'' if !in_string && bytes.get(at + 2) == Some(&b'\'') => at += 2,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(at + 1) == Some(&b'/') => return &line[..at],
            _ => {}
        }
        at += 1;
    }
    line
}

fn is_ident_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_'
}

/// Parses a path tree after `prefix::` (`a::b`, `a::{b, c::{d}}`, `a::*`),
/// pushing each full path's segments.
fn parse_tree(
    text: &[char],
    mut at: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let skip_space = |mut at: usize| {
        while at < text.len() && text[at].is_whitespace() {
            at += 1;
        }
        at
    };
    let mut path = prefix;
    loop {
        at = skip_space(at);
        if at < text.len() && text[at] == '{' {
            at += 1;
            loop {
                at = skip_space(at);
                if at >= text.len() || text[at] == '}' {
                    break;
                }
                at = parse_tree(text, at, path.clone(), out);
                at = skip_space(at);
                if at < text.len() && text[at] == ',' {
                    at += 1;
                }
            }
            return (at + 1).min(text.len());
        }
        let start = at;
        while at < text.len() && is_ident_char(text[at]) {
            at += 1;
        }
        let ident: String = text[start..at].iter().collect();
        if ident.is_empty() {
            // `*`, or something that is not a path: what came so far counts.
            if at < text.len() && text[at] == '*' {
                at += 1;
            }
            out.push(path);
            return at;
        }
        if ident != "self" {
            path.push(ident);
        }
        let after = skip_space(at);
        if text.get(after) == Some(&':') && text.get(after + 1) == Some(&':') {
            at = after + 2;
            continue;
        }
        // `as alias` and whatever follows the path are not part of it.
        out.push(path);
        return at;
    }
}

/// Every path in `code` that starts with `root::` (as a whole word, and not
/// `$crate::`).
fn paths_from(code: &str, root: &str) -> Vec<Vec<String>> {
    let text: Vec<char> = code.chars().collect();
    let needle: Vec<char> = format!("{root}::").chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at + needle.len() <= text.len() {
        if text[at..at + needle.len()] == needle[..]
            && (at == 0 || !(is_ident_char(text[at - 1]) || text[at - 1] == '$'))
        {
            parse_tree(&text, at + needle.len(), Vec::new(), &mut out);
            at += needle.len();
        } else {
            at += 1;
        }
    }
    out
}

/// The graph of `crate::` (and, from the binary, `herald::`) uses.
fn build_graph(src: &Path) -> (BTreeSet<Node>, Edges) {
    let mut list = Vec::new();
    rust_files(src, src, &mut list);
    let files: BTreeSet<Node> = list.iter().cloned().collect();
    // The binary: main.rs and the folders or files its `mod x;` lines name.
    let mut binary: BTreeSet<Node> = BTreeSet::new();
    if files.contains("main.rs") {
        binary.insert("main.rs".to_owned());
        let main = std::fs::read_to_string(src.join("main.rs")).expect("main.rs");
        for line in code_only(&main).lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
                binary.extend(files.iter().filter(|f| is_under(f, name)).cloned());
            }
        }
    }
    let library: BTreeSet<Node> = files.difference(&binary).cloned().collect();
    let mut edges = Edges::new();
    for file in &files {
        let text = std::fs::read_to_string(src.join(file)).expect("a source file");
        let code = code_only(&text);
        let mut uses: Vec<(Node, String)> = Vec::new();
        let in_binary = binary.contains(file);
        let (own, own_root) = if in_binary {
            (&binary, "main.rs")
        } else {
            (&library, "lib.rs")
        };
        for path in paths_from(&code, "crate") {
            uses.push((
                resolve(own, &path, own_root),
                format!("crate::{}", path.join("::")),
            ));
        }
        if in_binary {
            for path in paths_from(&code, "herald") {
                uses.push((
                    resolve(&library, &path, "lib.rs"),
                    format!("herald::{}", path.join("::")),
                ));
            }
        }
        let entry = edges.entry(file.clone()).or_default();
        for (to, written) in uses {
            if to != *file {
                entry.entry(to).or_insert(written);
            }
        }
    }
    (files, edges)
}

/// Strongly connected components of more than one file (Tarjan).
fn cycles(files: &BTreeSet<Node>, edges: &Edges) -> Vec<Vec<Node>> {
    struct State<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<Node>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        let edges = state.edges;
        for to in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            let to = to.as_str();
            if !state.index.contains_key(to) {
                visit(state, to);
                let low = state.low[node].min(state.low[to]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(to) {
                let low = state.low[node].min(state.index[to]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.push(top.to_owned());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.components.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for file in files {
        if !state.index.contains_key(file.as_str()) {
            visit(&mut state, file);
        }
    }
    state.components
}

/// The shortest cycle through the component's first file, written out with
/// the path that makes each step: `a.rs -[crate::b::X]-> b.rs -[..]-> a.rs`.
fn one_cycle(component: &[Node], edges: &Edges) -> String {
    let members: BTreeSet<&str> = component.iter().map(String::as_str).collect();
    let start = component[0].as_str();
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(node) = queue.pop_front() {
        for to in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            let to = to.as_str();
            if to == start {
                last = Some(node);
                break 'search;
            }
            if members.contains(to) && !came_from.contains_key(to) {
                came_from.insert(to, node);
                queue.push_back(to);
            }
        }
    }
    let mut steps = vec![start];
    let mut node = last.expect("a strongly connected component has a cycle");
    while node != start {
        steps.push(node);
        node = came_from[node];
    }
    steps.push(start);
    steps.reverse();
    let mut text = steps[0].to_owned();
    for pair in steps.windows(2) {
        text.push_str(&format!(" -[{}]-> {}", edges[pair[0]][pair[1]], pair[1]));
    }
    text
}

/// Every cycle and every broken rule, one line each.
fn violations(src: &Path) -> Vec<String> {
    let (files, edges) = build_graph(src);
    let mut found = Vec::new();
    for component in cycles(&files, &edges) {
        found.push(format!(
            "import cycle among {} files ({}): {}",
            component.len(),
            component.join(", "),
            one_cycle(&component, &edges)
        ));
    }
    for rule in rules() {
        for (from, uses) in &edges {
            if !(rule.from)(from) {
                continue;
            }
            for (to, written) in uses {
                if (rule.forbidden)(to) {
                    found.push(format!("{}: {from} uses {written} ({to})", rule.name));
                }
            }
        }
    }
    found
}

#[test]
fn dependencies_run_one_way_with_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "{} layering violation(s) in src/ (see ARCHITECTURE.md, Invariants):\n  {}",
        found.len(),
        found.join("\n  ")
    );
}

/// The check itself: a planted cycle and planted rule breaks are found and
/// named, and code that only looks like a use is not counted.
#[test]
fn the_layering_check_names_a_planted_cycle_and_every_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod domain;\npub mod clock;\n");
    write("main.rs", "mod cli;\nfn main() { cli::run() }\n");
    write("cli/mod.rs", "use herald::store::Store;\npub fn run() {}\n");
    write("clock.rs", "pub fn now_ms() -> i64 { 0 }\n");
    write(
        "domain/mod.rs",
        "pub mod event;\nuse crate::domain::event::Event;\n",
    );
    write(
        "domain/event.rs",
        "pub struct Event(i64);\nfn f() -> i64 { crate::clock::now_ms() }\n",
    );
    write(
        "store/mod.rs",
        "use crate::{config::Isolation, store::sqlite::{self, Open}};\n// use crate::dispatch::X;\n",
    );
    write("store/sqlite.rs", "pub struct Open;\n");
    write("config.rs", "use crate::store::postgres_default;\n");
    write(
        "kinds/slack/connector.rs",
        "fn f(s: &crate::store::Store) {}\n",
    );
    write(
        "kinds/slack/mock.rs",
        "use crate::kinds::slack::connector::Body;\nlet url = \"http://x\"; // crate::api::X\n",
    );
    write(
        "kinds/slack/mod.rs",
        "pub mod connector;\n#[cfg(test)]\nmod tests {\n    use crate::store::Store;\n}\n",
    );
    let found = violations(src);
    let text = found.join("\n");
    let expected = [
        "import cycle among 2 files (config.rs, store/mod.rs): config.rs -[crate::store::postgres_default]-> store/mod.rs -[crate::config::Isolation]-> config.rs",
        "the domain uses nothing of the crate but itself (not even the clock): domain/event.rs uses crate::clock::now_ms (clock.rs)",
        "the store uses neither the dispatcher nor the config file's types: store/mod.rs uses crate::config::Isolation (config.rs)",
        "the connectors do not use the store: kinds/slack/connector.rs uses crate::store::Store (store/mod.rs)",
        "the mock uses none of the dispatcher, the store, the connectors, the API, the server: kinds/slack/mock.rs uses crate::kinds::slack::connector::Body (kinds/slack/connector.rs)",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "unexpected extra lines in:\n{text}"
    );
}
