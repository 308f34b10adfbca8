#!/usr/bin/env python3
"""Import cycles between the top-level modules of src/ (the product crate).

    python3 scripts/import-cycles.py          # prints the module graph and its cycles
    python3 scripts/import-cycles.py --check  # exit 1 if there is a cycle
    python3 scripts/import-cycles.py --split config::walk   # count a submodule on its own
    python3 scripts/import-cycles.py --no-tests   # without tests.rs files and `#[cfg(test)]` tails

A module is `src/NAME.rs` with everything under `src/NAME/`. An edge A -> B is any path
`crate::B...` in A's code outside comments, `use crate::{B::..., ...}` groups included, tests
included (a test module's import is still an import). Cycles are the strongly connected
components with more than one module.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


SPLIT = [a for i, a in enumerate(sys.argv) if i > 0 and sys.argv[i - 1] == "--split"]


def module_of(path):
    rel = os.path.relpath(path, ROOT).split(os.sep)
    name = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    sub = name + "::" + rel[1][:-3] if len(rel) > 1 and rel[1].endswith(".rs") else None
    if sub in SPLIT:
        return sub
    return None if name in ("lib", "main") else name


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


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


def edges():
    graph = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            src = module_of(path)
            if src is None:
                continue
            graph.setdefault(src, set())
            text = strip_comments(open(path, encoding="utf-8").read())
            if "--no-tests" in sys.argv:
                if f == "tests.rs":
                    continue
                text = text.split("#[cfg(test)]", 1)[0]
            for m in re.finditer(r"\bcrate::", text):
                rest = text[m.end():]
                if rest.startswith("{"):
                    targets = group_heads(text, m.end())
                else:
                    targets = re.findall(r"^[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)?", rest)
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
        g[m] &= set(g)  # modules only (not macros such as `crate::outln!`)
    for m in sorted(g):
        print(f"{m:<10} -> {', '.join(sorted(g[m])) or '-'}")
    found = cycles(g)
    print(f"import cycles: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    if "--check" in sys.argv and found:
        sys.exit(1)
