#!/usr/bin/env python3
"""Import cycles between the top-level modules of src/ (the product crate).

    python3 scripts/import-cycles.py          # prints the module graph and its cycles
    python3 scripts/import-cycles.py --check  # exit 1 if there is a cycle
    python3 scripts/import-cycles.py --split config::split   # count a submodule on its own
    python3 scripts/import-cycles.py --no-tests   # production code only (see below)
    python3 scripts/import-cycles.py --root DIR   # another source tree (the check's own test)

`tests/layout.rs` runs `--check --no-tests` and `--check`, so `cargo test` fails on a cycle.

A module is `src/NAME.rs` with everything under `src/NAME/`; `lib.rs` and `main.rs` are no
module (they only declare and dispatch). What counts as an edge A -> B:
- any path `crate::B` in A's code: `use crate::B::...`, `crate::B::f(...)` in an expression or
  a type, `pub(in crate::B)`, each item of a `use crate::{B::..., C, ...}` group, and
  `$crate::B` in a macro defined in A;
- `crate::m!` (or `$crate::m!`) where `m` is a `#[macro_export]` macro defined in B (such a
  macro lives at the crate root, so its path does not name its module);
- only code counts: comments (doc comments included), string, raw-string and char literals are
  removed first, so a link in a doc comment is no edge;
- `super::` and `self::` paths are not followed: from a file at `src/NAME/x.rs` they stay
  inside NAME (the product never reaches the crate root through `super::super`);
- a path `crate::X` where X is not a module (a macro, `crate::*`) is no edge.
With `--no-tests`, test code is left out: every `tests.rs` file, any file declared by a
`#[cfg(test)] mod NAME;`, and every item marked `#[cfg(test)]` (usually `mod tests { ... }`),
wherever it is in the file.
Cycles are the strongly connected components with more than one module.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
if "--root" in sys.argv:
    ROOT = sys.argv[sys.argv.index("--root") + 1]

SPLIT = [a for i, a in enumerate(sys.argv) if i > 0 and sys.argv[i - 1] == "--split"]
NO_TESTS = "--no-tests" in sys.argv

# Comments, then literals: string (with `b`/`c` prefixes), raw string, char. Lifetimes (`'a`)
# are not chars: a char literal holds one character or one escape between its quotes.
TOKENS = re.compile(
    r"""(?P<line>//[^\n]*)
      | (?P<block>/\*)
      | (?P<raw>(?:\b[bc])?\br(?P<hashes>\#*)")
      | (?P<str>(?:\b[bc])?"(?:\\.|[^"\\])*")
      | (?P<char>(?:\bb)?'(?:\\(?:x[0-9A-Fa-f]{2}|u\{[0-9A-Fa-f]{1,6}\}|.)|[^\\'\n])')
    """,
    re.S | re.X,
)


def strip_code(text):
    """The text without comments and literals (each literal becomes `""`), line breaks kept."""
    out, i = [], 0
    while True:
        m = TOKENS.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        if m.group("line") is not None:
            i = m.end()
        elif m.group("block") is not None:
            depth, j = 1, m.end()  # block comments nest
            while depth and j < len(text):
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", m.start(), j))
            i = j
        elif m.group("raw") is not None:
            close = '"' + m.group("hashes")
            j = text.find(close, m.end())
            j = len(text) if j < 0 else j + len(close)
            out.append('""' + "\n" * text.count("\n", m.start(), j))
            i = j
        else:
            out.append('""' + "\n" * m.group(0).count("\n"))
            i = m.end()


def item_end(text, i):
    """The end of the item starting at text[i]: after its `;` or its balanced `{...}` block,
    whichever comes first (attributes and a `where` clause are part of the item)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            return i + 1
        elif c == "{" and depth == 0:
            level = 0
            while i < len(text):
                if text[i] == "{":
                    level += 1
                elif text[i] == "}":
                    level -= 1
                    if level == 0:
                        return i + 1
                i += 1
            return i
        i += 1
    return i


CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")


def without_tests(text, path, skipped):
    """`text` without its `#[cfg(test)]` items; files they declare go into `skipped`."""
    out, i = [], 0
    for m in CFG_TEST.finditer(text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        end = item_end(text, m.end())
        decl = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", text[m.end():end])
        if decl:
            base = os.path.dirname(path)
            if os.path.basename(path) not in ("mod.rs", "lib.rs", "main.rs"):
                base = os.path.join(base, os.path.basename(path)[:-3])
            for f in (decl.group(1) + ".rs", os.path.join(decl.group(1), "mod.rs")):
                skipped.add(os.path.normpath(os.path.join(base, f)))
        out.append("\n" * text.count("\n", m.start(), end))
        i = end
    out.append(text[i:])
    return "".join(out)


def module_of(path):
    rel = os.path.relpath(path, ROOT).split(os.sep)
    name = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    sub = name + "::" + rel[1][:-3] if len(rel) > 1 and rel[1].endswith(".rs") else None
    if sub in SPLIT:
        return sub
    return None if name in ("lib", "main") else name


def group_heads(text, start):
    """The first identifier of each item of the `{...}` group opening at text[start]."""
    depth, heads, expect = 0, [], True
    i = start
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            expect = depth == 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        elif c == "," and depth == 1:
            expect = True
        elif expect and depth == 1 and (c.isalpha() or c == "_"):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            heads.append(m.group(0))
            i += len(m.group(0))
            expect = False
            continue
        i += 1
    return heads


def sources():
    """(path, module, code) of every file of src/, code without comments and literals."""
    files = []
    for dirpath, _, names in os.walk(ROOT):
        for f in sorted(names):
            if f.endswith(".rs"):
                path = os.path.normpath(os.path.join(dirpath, f))
                files.append((path, module_of(path), strip_code(open(path, encoding="utf-8").read())))
    if not NO_TESTS:
        return files
    skipped, kept = set(), []
    for path, module, code in files:
        kept.append((path, module, without_tests(code, path, skipped)))
    return [(p, m, c) for p, m, c in kept if os.path.basename(p) != "tests.rs" and p not in skipped]


def edges():
    files = sources()
    macros = {}  # `#[macro_export]` macro name -> the module defining it
    for _, module, code in files:
        for m in re.finditer(r"#\s*\[\s*macro_export\s*\]\s*macro_rules!\s*([A-Za-z_][A-Za-z0-9_]*)", code):
            if module is not None:
                macros[m.group(1)] = module
    graph = {}
    for _, src, text in files:
        if src is None:
            continue
        graph.setdefault(src, set())
        for m in re.finditer(r"\bcrate\s*::\s*", text):
            rest = text[m.end():]
            if rest.startswith("{"):
                targets = group_heads(text, m.end())
            else:
                macro = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*!", rest)
                if macro:
                    targets = [macros.get(macro.group(1), macro.group(1))]
                else:
                    targets = re.findall(r"^[A-Za-z_][A-Za-z0-9_]*(?:\s*::\s*[A-Za-z_][A-Za-z0-9_]*)?", rest)
                    targets = [re.sub(r"\s+", "", t) for t in targets]
                    targets = [t if t in SPLIT else t.split("::")[0] for t in targets]
            for t in targets:
                if t != src and t != "self":
                    graph[src].add(t)
    return graph


def cycles(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    g = edges()
    for m in g:
        g[m] &= set(g)  # modules only (not `crate::*` or an unknown macro)
    for m in sorted(g):
        print(f"{m:<10} -> {', '.join(sorted(g[m])) or '-'}")
    found = cycles(g)
    print(f"import cycles: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    if "--check" in sys.argv and found:
        sys.exit(1)
