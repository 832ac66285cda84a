//! The library's modules depend on each other one way only: each may use
//! the modules of the layers below its own, never one above (so there are
//! no cycles). docs/architecture.md draws the same layers.

use std::fs;
use std::path::Path;

/// From the bottom up.
const LAYERS: &[&[&str]] = &[
    &["version"],
    &[
        "clock", "duration", "fsread", "identity", "sql", "url", "remedy",
    ],
    &["source"],
    &["waits"],
    &["lock"],
    &["history"],
    &["plan"],
    &["error"],
    &["driver"],
    &["migrator"],
    &["build"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS"))
}

/// The top-level module a source file belongs to, and the code outside its
/// tests.
fn sources(dir: &Path, out: &mut Vec<(String, String, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
            continue;
        }
        let rel = path
            .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
            .unwrap();
        let file = rel.file_name().unwrap().to_str().unwrap();
        // Test-only files may use anything.
        if rel == Path::new("lib.rs") || ["tests.rs", "memory.rs", "simulation.rs"].contains(&file)
        {
            continue;
        }
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs").to_string();
        let text = fs::read_to_string(&path).unwrap();
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        out.push((rel.display().to_string(), module, code));
    }
}

#[test]
fn modules_use_only_the_layers_below_their_own() {
    let mut files = Vec::new();
    sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut wrong = Vec::new();
    for (file, module, code) in &files {
        for (at, _) in code.match_indices("crate::") {
            // An exported macro's `$crate::X` names the public API, which
            // the crate's root re-exports; not a module.
            if code[..at].ends_with('$') {
                continue;
            }
            let used: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used != *module && !used.is_empty() && layer(&used) >= layer(module) {
                wrong.push(format!("{file}: `{module}` uses `{used}`"));
            }
        }
    }
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
