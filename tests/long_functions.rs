//! A habit of the code base (issue 11): no function over 80 lines in `src/` and
//! `crates/qlik-sim/src`, as `scripts/long-fns.sh` measures it (signature to closing brace,
//! tests included). Split a long function into well-named pieces rather than raising the limit.

use std::{path::Path, process::Command};

/// The longest a function may be (lines).
const MAX_LINES: usize = 80;

/// Functions allowed over the limit, as `(file, function)`: none. The list stays for a
/// function that must wait for a split (the test fails while an entry is stale); keep it empty.
const ALLOWED: &[(&str, &str)] = &[];

/// One function as the script lists it.
#[derive(Debug)]
struct Function {
    lines: usize,
    file: String,
    name: String,
}

/// Runs `scripts/long-fns.sh --max 80` listing every function (over `dirs`, or the default
/// ones): whether it passed, the functions, and the count over the limit it reported.
fn long_fns(dirs: &[&Path]) -> (bool, Vec<Function>, usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/long-fns.sh"))
        .args(["--max", &MAX_LINES.to_string(), "-n", "1000000"])
        .args(dirs)
        .output()
        .expect("bash runs scripts/long-fns.sh");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut functions = Vec::new();
    let mut reported = None;
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(n) = line.strip_prefix(&format!("functions over {MAX_LINES} lines: ")) {
            reported = Some(n.trim().parse().expect("a count"));
            continue;
        }
        // `<lines> <file>:<line> <name>`
        let mut parts = line.split_whitespace();
        let (Some(lines), Some(at), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("unexpected line from long-fns.sh: {line:?}");
        };
        let (file, _) = at.rsplit_once(':').expect("file:line");
        functions.push(Function {
            lines: lines.parse().expect("a line count"),
            file: file.to_owned(),
            name: name.to_owned(),
        });
    }
    let reported = reported.unwrap_or_else(|| {
        panic!(
            "long-fns.sh reported no count; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), functions, reported)
}

#[test]
fn no_function_in_the_sources_is_over_80_lines_but_the_allowed_ones() {
    let (passed, functions, reported) = long_fns(&[]);
    // The script sees the whole tree (a broken script must not pass silently).
    assert!(functions.len() > 500, "only {} functions", functions.len());
    assert!(
        functions
            .iter()
            .any(|f| f.file == "src/main.rs" && f.name == "main"),
        "src/main.rs main is not listed"
    );
    assert!(
        functions
            .iter()
            .any(|f| f.file.starts_with("crates/qlik-sim/src/")),
        "crates/qlik-sim/src is not scanned"
    );
    let over: Vec<&Function> = functions.iter().filter(|f| f.lines > MAX_LINES).collect();
    assert_eq!(reported, over.len(), "the script's count: {over:?}");
    assert_eq!(passed, over.is_empty(), "the script's exit status");
    let is_allowed = |f: &Function| ALLOWED.contains(&(f.file.as_str(), f.name.as_str()));
    let unexpected: Vec<String> = (over.iter())
        .filter(|f| !is_allowed(f))
        .map(|f| format!("{} {} ({} lines)", f.file, f.name, f.lines))
        .collect();
    assert!(
        unexpected.is_empty(),
        "functions over {MAX_LINES} lines (split them into well-named pieces): {unexpected:#?}"
    );
    for (file, name) in ALLOWED {
        assert!(
            over.iter().any(|f| f.file == *file && f.name == *name),
            "{file} {name} is no longer over {MAX_LINES} lines: remove it from ALLOWED"
        );
    }
}

#[test]
fn the_check_fails_on_a_long_function_and_passes_a_short_one() {
    let dir = tempfile::tempdir().unwrap();
    let body = |n: usize| {
        (0..n)
            .map(|i| format!("    let _x{i} = {i};\n"))
            .collect::<String>()
    };
    let text = format!(
        "fn short() {{\n{}}}\n\nimpl A {{\n    pub async fn long(&self) {{\n{}    }}\n}}\n",
        body(10),
        body(MAX_LINES)
    );
    std::fs::write(dir.path().join("a.rs"), text).unwrap();
    let (passed, functions, reported) = long_fns(&[dir.path()]);
    assert!(!passed, "{functions:?}");
    assert_eq!(reported, 1);
    let long = functions.iter().find(|f| f.name == "long").expect("listed");
    assert_eq!(long.lines, MAX_LINES + 2);
    let short = functions
        .iter()
        .find(|f| f.name == "short")
        .expect("listed");
    assert_eq!(short.lines, 12);

    std::fs::write(
        dir.path().join("a.rs"),
        format!("fn ok() {{\n{}}}\n", body(78)),
    )
    .unwrap();
    let (passed, functions, reported) = long_fns(&[dir.path()]);
    assert!(passed && reported == 0, "{functions:?}");
    assert_eq!(functions[0].lines, MAX_LINES);
}
