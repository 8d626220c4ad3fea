"""The house rules ARCHITECTURE.md states, checked on the source: core never imports Streamlit, no module
is a slice of several ideas (size), no private name crosses a module boundary, no import cycle, no
docstring points at notes that are not in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
MAX_LINES = 600


def core_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports(module: str, path: Path, *, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names) for each import in `path` (module-level ones only when asked)."""
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports exist for annotations only, never at run time
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        for sub in ast.walk(node)
    }
    nodes = [n for n in (tree.body if top_level_only else ast.walk(tree)) if id(n) not in typing_only]
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node.level, node.module)
            out.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif top_level_only and isinstance(node, ast.If | ast.Try):  # guarded top-level imports
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and id(sub) not in typing_only:
                    target = _resolve(module, path.name == "__init__.py", sub.level, sub.module)
                    out.append((target, [a.name for a in sub.names]))
    return out


def test_core_never_imports_streamlit():
    bad = [
        m
        for m, p in core_modules().items()
        for t, _ in imports(m, p, top_level_only=False)
        if t.startswith("streamlit")
    ]
    assert not bad, f"core modules importing streamlit: {bad}"


def test_no_core_module_is_a_slice_of_several_ideas():
    long = {m: n for m, p in core_modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by idea): {long}"


def test_no_private_name_is_imported_across_modules():
    mods = core_modules()
    sources = {**mods}
    for folder in ("ui", "pages", "bench"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            sources[f"{folder}.{p.stem}"] = p
    bad = []
    for m, p in sources.items():
        for target, names in imports(m, p, top_level_only=False):
            if not target.startswith(("core", "ui")) or target == m:
                continue
            bad += [f"{m}: from {target} import {n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_import_cycle():
    """No cycle among core modules, counting imports inside functions too (a lazy import is still a
    dependency of ideas)."""
    mods = core_modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names in imports(m, p, top_level_only=False):
            for cand in [target, *(f"{target}.{n}" for n in names)]:
                if cand in mods and cand != m:
                    graph[m].add(cand)
    # a package's __init__ importing its own submodules is not a cycle of ideas
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_docs_cited_by_the_code_are_in_the_repository():
    pattern = re.compile(r"(METHODS\.md|DESIGN\.md|ZOO-NOTES|shared/)")
    files = [*CORE.rglob("*.py"), *(ROOT / "ui").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "README.md"]
    bad = [str(f.relative_to(ROOT)) for f in files if pattern.search(f.read_text())]
    assert not bad, f"files citing notes that are not in the repository: {bad}"
    for cited in set(re.findall(r"docs/methods/[\w-]+\.md", "".join(f.read_text() for f in files))):
        assert (ROOT / cited).is_file(), f"{cited} is cited but missing"
