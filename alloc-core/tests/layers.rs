//! The engine's layering, checked: each folder of `alloc-core/src` may use only the folders
//! declared before it in `lib.rs` (the one place the order is written), and no two modules use
//! each other, directly or around a circle.
//!
//! A module's uses are the `crate::<folder>::<module>` paths (and `super::`) in its code outside
//! its `#[cfg(test)]` tests: tests may drive the engine from its entry points.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layer folders, bottom first, as `lib.rs` declares them.
fn layer_order() -> Vec<String> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub(crate) mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `pool/arena.rs` -> `pool::arena`, `thread/mod.rs` -> `thread`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its test module (the code from a
/// `#[cfg(test)]` line followed by `mod`; test modules come last in every file).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(l.split(" // ").next().unwrap());
        out.push('\n');
    }
    out
}

/// The modules `code` (of module `me`) uses: the longest known module path after each
/// `crate::`, and `super::` as the parent module.
fn uses_of(me: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue; // `sampalloc_core::` and the like
        }
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut best = None;
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in 1..=segs.len() {
            let cand = segs[..n].join("::");
            if known.contains(&cand) {
                best = Some(cand);
            }
        }
        // `crate::thread::{self, cache}`: a group names the modules inside it.
        if let Some(b) = &best {
            if rest[path.len()..].starts_with('{') || path.ends_with("::") {
                let group: String = rest[path.len()..]
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| *c != '}')
                    .collect();
                for item in group.split(',') {
                    let name = item.split_whitespace().next().unwrap_or("");
                    let sub = format!("{b}::{name}");
                    if known.contains(&sub) {
                        used.insert(sub);
                    }
                }
            }
            used.insert(b.clone());
        }
    }
    if code.contains("super::") {
        if let Some((parent, _)) = me.rsplit_once("::") {
            used.insert(parent.to_string());
        }
    }
    used.remove(me);
    used
}

struct Engine {
    order: Vec<String>,
    uses: BTreeMap<String, BTreeSet<String>>,
}

fn engine() -> Engine {
    let order = layer_order();
    assert!(
        order.len() >= 5,
        "lib.rs declares the layer folders: {order:?}"
    );
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .into_iter()
        .map(|f| (module_of(&f), f))
        .filter(|(m, _)| m != "lib")
        .collect();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let uses = modules
        .iter()
        .map(|(m, f)| {
            let code = code_of(&fs::read_to_string(f).unwrap());
            (m.clone(), uses_of(m, &code, &known))
        })
        .collect();
    Engine { order, uses }
}

fn layer_rank(order: &[String], module: &str) -> usize {
    let folder = module.split("::").next().unwrap();
    order
        .iter()
        .position(|l| l == folder)
        .unwrap_or_else(|| panic!("{module} is in no layer folder declared by lib.rs"))
}

#[test]
fn no_folder_uses_a_folder_above_it() {
    let e = engine();
    let mut upward = Vec::new();
    for (m, used) in &e.uses {
        for u in used {
            if layer_rank(&e.order, u) > layer_rank(&e.order, m) {
                upward.push(format!("{m} uses {u}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "upward uses (layers, bottom first: {:?}):\n{}",
        e.order,
        upward.join("\n")
    );
}

#[test]
fn no_module_circle() {
    let e = engine();
    // A module that declares submodules (`thread/mod.rs`) is their parent, not their user:
    // the edge parent -> child is only a declaration when the child is its own submodule.
    let edges = |m: &str| -> Vec<String> {
        e.uses[m]
            .iter()
            .filter(|u| !u.starts_with(&format!("{m}::")))
            .cloned()
            .collect()
    };
    // Depth-first search for a back edge.
    let mut state: BTreeMap<String, u8> = BTreeMap::new(); // 1 on the path, 2 done
    fn visit(
        m: &str,
        edges: &dyn Fn(&str) -> Vec<String>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == m).unwrap();
                let mut circle = path[at..].to_vec();
                circle.push(m.to_string());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for u in edges(m) {
            if let Some(c) = visit(&u, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    for m in e.uses.keys() {
        let mut path = Vec::new();
        if let Some(c) = visit(m, &edges, &mut state, &mut path) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_uses() {
    // The checker itself: a use of a higher layer is seen, in both spellings.
    let known: BTreeSet<String> = ["pool::arena", "pool", "thread", "thread::cache"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = "use crate::pool::arena::{self, Arena};\nuse crate::thread::{self, cache};\n";
    let used = uses_of("addr::segment", code, &known);
    assert!(used.contains("pool::arena"), "{used:?}");
    assert!(used.contains("thread::cache"), "{used:?}");
    let e = engine();
    assert!(e.uses["api::alloc"].contains("thread::cache"));
}
