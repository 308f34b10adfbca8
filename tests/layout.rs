//! The module layering (`src/lib.rs`, "Layout"): no import cycle between the top-level modules
//! of `src/`, with or without test code, as `scripts/import-cycles.py` counts them; and that
//! script counts what it says it counts (each rule tried on a small tree of its own, so the
//! check can fail). Needs `python3` (the test command needs it already, for moto); no network.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import-cycles.py")
}

fn run(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 runs scripts/import-cycles.py")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The printed graph: module → its imports.
fn graph(out: &Output) -> BTreeMap<String, Vec<String>> {
    stdout(out)
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(m, to)| {
            let to = match to.trim() {
                "-" => vec![],
                list => list.split(", ").map(str::to_owned).collect(),
            };
            (m.trim().to_owned(), to)
        })
        .collect()
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    for args in [&["--check", "--no-tests"][..], &["--check"][..]] {
        let out = run(args);
        assert!(
            out.status.success() && stdout(&out).contains("import cycles: 0"),
            "scripts/import-cycles.py {args:?} found a cycle (see the Layout section of src/lib.rs \
             for the layering; move the item down, or re-export it from the higher module):\n{}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        let g = graph(&out);
        // The graph is the real one: the modules are there, and the low ones import no high one.
        for m in [
            "config", "secrets", "rotation", "daemon", "commands", "walk", "exit",
        ] {
            assert!(g.contains_key(m), "{m} missing from {g:?}");
        }
        assert!(g["rotation"].contains(&"secrets".to_owned()), "{g:?}");
        assert_eq!(g["text"], Vec::<String>::new());
        assert_eq!(g["walk"], ["text"]);
    }
}

/// Writes `files` (path under `src/`, content) into a fresh tree and runs the script on it.
fn run_on(files: &[(&str, &str)], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let root = dir.path().to_str().unwrap().to_owned();
    let mut all = vec!["--root", root.as_str()];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn a_cycle_fails_the_check_and_is_named() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::{b::B, c};\npub struct A;\n"),
        ("b/mod.rs", "pub mod x;\npub struct B;\n"),
        // The edge is in a submodule's file: it counts for `b`.
        ("b/x.rs", "pub fn f() -> crate::a::A { crate::a::A }\n"),
        ("c.rs", "pub struct C;\n"),
    ];
    let out = run_on(&files, &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("import cycles: 1\n  a <-> b\n"),
        "{}",
        stdout(&out)
    );
    let g = graph(&out);
    assert_eq!(g["a"], ["b", "c"]);
    assert_eq!(g["b"], ["a"]);
    assert_eq!(g["c"], Vec::<String>::new());
    // Without --check the same graph is printed and the exit code is 0.
    assert!(run_on(&files, &[]).status.success());
}

#[test]
fn comments_and_literals_are_no_edges() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        (
            "a.rs",
            "//! See [`crate::b::B`].\n\
             /* crate::b::B /* nested */ crate::b::B */\n\
             /// Links to [`crate::b`].\n\
             pub const S: &str = \"crate::b::B { // not code\";\n\
             pub const R: &str = r#\"crate::b::B \" {\"#;\n\
             pub const C: char = '{';\n\
             pub fn f<'a>(s: &'a str) -> &'a str { s } // crate::b::B\n",
        ),
        (
            "b.rs",
            "pub struct B;\npub fn g() -> crate::a::Nothing {}\n",
        ),
    ];
    let out = run_on(&files, &["--check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(graph(&out)["a"], Vec::<String>::new());
    assert_eq!(graph(&out)["b"], ["a"]);
}

#[test]
fn test_code_counts_unless_no_tests_and_is_found_anywhere() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "pub struct A;\n"),
        (
            "b/mod.rs",
            "#[cfg(test)]\nmod helpers;\n\
             #[cfg(test)]\nfn only_in_tests() -> crate::a::A { crate::a::A }\n\
             pub fn real() {}\n\
             #[cfg(test)]\nmod tests {\n    use crate::a::A;\n    fn t() { let _ = '}'; }\n}\n\
             pub fn after_the_tests() {}\n",
        ),
        ("b/helpers.rs", "use crate::a::A;\n"),
        ("b/tests.rs", "use crate::a::A;\n"),
        ("a/tests.rs", "use crate::b::real;\n"),
    ];
    let with_tests = run_on(&files, &[]);
    assert_eq!(graph(&with_tests)["b"], ["a"]);
    assert!(stdout(&with_tests).contains("import cycles: 1"));
    let without = run_on(&files, &["--no-tests", "--check"]);
    assert!(without.status.success(), "{}", stdout(&without));
    assert_eq!(graph(&without)["a"], Vec::<String>::new());
    assert_eq!(graph(&without)["b"], Vec::<String>::new());
    // Code after a `#[cfg(test)]` item still counts.
    let files_after = [
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "pub struct A;\n"),
        (
            "b.rs",
            "#[cfg(test)]\nmod tests {}\npub fn f() -> crate::a::A { crate::a::A }\n",
        ),
    ];
    assert_eq!(graph(&run_on(&files_after, &["--no-tests"]))["b"], ["a"]);
}

#[test]
fn an_exported_macro_is_an_edge_to_its_module() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        (
            "a.rs",
            "#[macro_export]\nmacro_rules! say { () => { $crate::a::f() }; }\npub fn f() {}\n",
        ),
        ("b.rs", "pub fn g() { crate::say!(); }\n"),
    ];
    let out = run_on(&files, &[]);
    assert_eq!(graph(&out)["b"], ["a"]);
    assert_eq!(graph(&out)["a"], Vec::<String>::new());
}
