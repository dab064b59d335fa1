#!/usr/bin/env python3
"""Lists each crate's top-level modules and the modules they use (`crate::X` paths), and fails
when two modules use each other, directly or through others (an import loop). Run from the
repository root: scripts/check-layers.py [--print]."""
import pathlib
import re
import sys

CRATES = ["mly-contract", "mly-core", "mly-sim", "mly-harvest"]
USE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `super::` at the top level of a module file means the crate root (lib.rs / main.rs).


def top_module(crate_src: pathlib.Path, path: pathlib.Path) -> str:
    rel = path.relative_to(crate_src)
    first = rel.parts[0]
    return first[:-3] if first.endswith(".rs") else first


def graph(crate: str) -> dict:
    src = pathlib.Path(crate) / "src"
    edges: dict = {}
    for path in src.rglob("*.rs"):
        module = top_module(src, path)
        if module in ("lib", "main"):
            continue
        text = path.read_text()
        # Tests may reach anywhere; only the code that ships counts.
        text = text.split("#[cfg(test)]")[0]
        if path.name == "tests.rs":
            continue
        for used in USE.findall(text):
            if used != module:
                edges.setdefault(module, set()).add(used)
        edges.setdefault(module, set())
    return edges


def cycles(edges: dict) -> list:
    found, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m in edges and state.get(m) is None:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if state.get(n) is None:
            visit(n, [])
    return found


def main() -> int:
    bad = 0
    for crate in CRATES:
        edges = graph(crate)
        if "--print" in sys.argv:
            print(f"{crate}:")
            for m in sorted(edges):
                print(f"  {m} -> {', '.join(sorted(edges[m])) or '-'}")
        for c in cycles(edges):
            print(f"{crate}: import loop: {' -> '.join(c)}")
            bad += 1
    if bad == 0:
        print("check-layers: no import loop between the top-level modules of " + ", ".join(CRATES))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
