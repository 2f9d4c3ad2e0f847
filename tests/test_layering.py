"""Every import points down the layers, and no two packages import each other.

Layers, lowest first (docs/index.md, "Code layout"):

0. base modules: constants, paths, device choice, allocator tuning, progress, atomic writes, instance
   label images, the model registry (``models/zoo.py``);
1. ``models/``, ``layers/``;
2. ``data/``, ``io/``;
3. ``analysis/``, ``training/``;
4. ``widgets/``, the command-line programs and the napari sample-data contribution.

A module may import its own layer or a lower one, and no two packages, nor two modules, import
each other (directly or round a longer loop). The imports are read from the source (``ast``,
every ``import`` statement including the ones inside functions), as tests/test_plugin.py reads
which modules pull in Qt.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_sickle"
PKG = "napari_sickle"

BASE = {"napari_sickle", "constants", "_paths", "_device", "_malloc", "_progress", "_atomic", "instances", "models.zoo"}
PACKAGE_RANK = {
    "models": 1,
    "layers": 1,
    "data": 2,
    "io": 2,
    "analysis": 3,
    "training": 3,
    "widgets": 4,
    "cli": 4,
    "plugin": 4,
}
TOP_RANK = {"analyze": 4, "train": 4, "evaluate": 4, "simulate": 4, "demo": 4, "_sample_data": 4, "__main__": 4}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _short(mod: str) -> str:
    return mod[len(PKG) + 1 :] if mod.startswith(PKG + ".") else mod


def rank(mod: str) -> int:
    short = _short(mod)
    if short in BASE:
        return 0
    head = short.split(".")[0]
    if head in PACKAGE_RANK:
        return PACKAGE_RANK[head]
    if short in TOP_RANK:
        return TOP_RANK[short]
    raise AssertionError(f"{mod} has no layer: add it to BASE, PACKAGE_RANK or TOP_RANK in {__file__}")


def _resolve(name: str, modules) -> str:
    """The longest module prefix of ``name`` (``pkg.attr`` -> ``pkg``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(mod: str, path: Path, modules) -> set[str]:
    """The napari_sickle modules that ``mod`` imports anywhere in its source."""
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]  # resolved to the module below
        else:
            continue
        for n in names:
            if n == PKG or n.startswith(PKG + "."):
                target = _resolve(n, modules)
                if target != mod:
                    found.add(target)
    return found


def _graph():
    modules = _modules()
    return {m: imports(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer():
    for mod in _modules():
        rank(mod)


def test_every_subpackage_has_a_rank():
    """A new top-level package (as cli/ and plugin/ were) gets its place in the layers."""
    packages = sorted(d.name for d in SRC.iterdir() if (d / "__init__.py").is_file())
    unranked = [p for p in packages if p not in PACKAGE_RANK]
    assert not unranked, f"packages without a layer: {unranked}; add them to PACKAGE_RANK"


def test_imports_point_down():
    up = [
        f"{_short(m)} (layer {rank(m)}) imports {_short(t)} (layer {rank(t)})"
        for m, targets in _graph().items()
        for t in sorted(targets)
        if rank(t) > rank(m)
    ]
    assert not up, "imports that point up:\n" + "\n".join(up)


def _package(mod: str) -> str:
    short = _short(mod)
    return short.split(".")[0] if "." in short else short


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for m, targets in _graph().items():
        for t in targets:
            a, b = _package(m), _package(t)
            if a != b and PKG not in (_short(m), _short(t)):
                edges.setdefault(a, set()).add(b)
    cycles = _cycles(edges)
    where = [
        f"{a} -> {b}: "
        + ", ".join(
            sorted(
                f"{_short(m)} -> {_short(t)}"
                for m, ts in _graph().items()
                for t in ts
                if _package(m) == a and _package(t) == b
            )
        )
        for c in cycles
        for a in c
        for b in sorted(edges.get(a, ()))
        if b in c
    ]
    assert not cycles, f"packages that import each other: {cycles}\n" + "\n".join(where)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The parser resolves ``from ..x import y`` and imports inside functions."""
    modules = {
        "napari_sickle",
        "napari_sickle.io",
        "napari_sickle.io.formats",
        "napari_sickle.layers",
        "napari_sickle.layers.annotations",
        "napari_sickle.constants",
    }
    (tmp_path / "layers").mkdir()
    f = tmp_path / "layers" / "annotations.py"
    f.write_text("from ..constants import A\n\ndef g():\n    from ..io.formats import B\n    from . import spatial\n")
    got = imports("napari_sickle.layers.annotations", f, modules)
    assert got == {"napari_sickle.constants", "napari_sickle.io.formats", "napari_sickle.layers"}
    assert rank("napari_sickle.io.formats") > rank("napari_sickle.layers.annotations")


def test_no_import_cycle_between_modules():
    cycles = _cycles(_graph())
    where = [", ".join(_short(m) for m in c) for c in cycles]
    assert not cycles, "modules that import each other (directly or round a loop):\n" + "\n".join(where)


def test_the_cycle_check_finds_loops():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _reach(graph, mod: str) -> set[str]:
    seen, todo = set(), [mod]
    while todo:
        for t in graph.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_the_learned_splitter_trains_from_data_and_models_only():
    """training/splitter.py's data path (the composed crops, their U-Net targets, the cell split,
    the image normalisation) stays in data/, io/ and models/: it reaches no analysis or other
    training module, which would pull the whole analysis and training stack into it."""
    reached = _reach(_graph(), f"{PKG}.training.splitter")
    climbs = sorted(_short(m) for m in reached if rank(m) >= rank(f"{PKG}.training.splitter"))
    assert not climbs, f"training.splitter reaches {climbs}"
