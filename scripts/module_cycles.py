#!/usr/bin/env python3
"""Fails when a crate has an import circle: module A refers to module B while B refers to A,
directly or through others.

A module refers to another through `crate::`, `super::` and `self::` paths (grouped `use`
lists included) and through relative paths into its own child modules (`child::X`, which is
how `pub use child::X` re-exports read). Declaring a child (`mod child;`) is not a reference.
Unit-test modules (`#[cfg(test)] mod tests`) and comments are ignored.

Usage: scripts/module_cycles.py CRATE_DIR...   (each holding a src/ folder)
"""

import os
import re
import sys


def modules(src):
    """Module path (tuple of names, () for the crate root) -> file."""
    found = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found[tuple(parts)] = path
    return found


def resolve(path, mods):
    """The deepest module that `path` (a list of names) lies in."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return ()


def base_of(head, rest, mod):
    """The module a `crate::`/`super::`/`self::` path starts from, and the names after it."""
    if head == "crate":
        return [], rest
    if head == "self":
        return list(mod), rest
    up = 1
    while rest and rest[0] == "super":
        up += 1
        rest = rest[1:]
    return list(mod)[: max(len(mod) - up, 0)], rest


def references(mod, text, mods):
    text = re.split(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s*)?mod tests", text)[0]
    text = re.sub(r"//[^\n]*", "", text)
    out = set()
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", text):
        base, rest = base_of(m.group(1), m.group(2).split("::")[1:], mod)
        out.add(resolve(base + rest, mods))
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)*)::\{([^}]*)\}", text):
        prefix = m.group(2).split("::")[1:] if m.group(2) else []
        base, rest = base_of(m.group(1), prefix, mod)
        for item in m.group(3).split(","):
            name = item.strip().split("::")[0].strip()
            if name and name != "self":
                out.add(resolve(base + rest + [name], mods))
            else:
                out.add(resolve(base + rest, mods))
    for m in re.finditer(r"(?<![:\w])(\w+)::", text):
        child = tuple(list(mod) + [m.group(1)])
        if child in mods:
            out.add(child)
    out.discard(mod)
    return out


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                comps.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return comps


def main(crates):
    bad = 0
    for crate in crates:
        mods = modules(os.path.join(crate, "src"))
        graph = {m: references(m, open(p, encoding="utf-8").read(), mods) for m, p in mods.items()}
        for comp in cycles(graph):
            names = sorted("::".join(m) or "<crate root>" for m in comp)
            print(f"{crate}: import circle between {', '.join(names)}")
            bad += 1
    if bad:
        sys.exit(1)
    print(f"no import circles in {', '.join(crates)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["proto", "coordinator", "worker", "analysis", "cli", "bench", "testkit"])
