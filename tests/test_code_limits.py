"""Size and wording limits of the source tree.

* every module under src/ has at most ``MAX_MODULE_LINES`` lines;
* a function or method longer than ``MAX_FUNCTION_LINES`` lines carries, within the three lines
  directly above its ``def`` (or its decorators), a comment saying why it stays in one piece
  (``# ... long because ...`` or ``# ... one piece because ...``);
* no file under src/ or docs/ talks about how the work on the code was organised
  (``WORK_WORDS``);
* no docstring carries a measured figure (a speed, a run time, a score): figures belong in
  docs/, next to the command that measures them (``FIGURE``).

The first two are checked per file, so a failure names the file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOCS = ROOT / "docs"

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
WHY_LONG = re.compile(r"^\s*#.*\b(long|one piece)\b.*\bbecause\b", re.I)
WORK_WORDS = re.compile(r"\b(session|sessions|team|teams|helper|helpers)\b", re.I)
TEXT_SUFFIXES = {".py", ".md", ".rst", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".json"}
FIGURE = re.compile(
    r"""(
      \b\d+(\.\d+)?\s?(s|ms|sec|seconds|min|minutes|h|hours)\s+(per|wall|on\ the|for\ the)\b  # 12 s per image
    | \b(AP|AP50|mAP|macro[- ]?F1|micro[- ]?F1|F1(@0?\.\d+)?|exact[- ]match|accuracy
         |balanced[- ]accuracy|Dice|IoU|AUC|AUROC)\s*(=|:|of|was|is|reaches)?\s*0?\.\d{2,}   # AP50 0.81
    | \b(images?|smears?|cells?|tiles?|crops?|regions?|it)\s*/\s*(s|sec|min|h)\b          # 3.2 images/s
    | \b\d+(\.\d+)?\s?(x|×|times)\s+(faster|slower|quicker|speed-?up)                     # 2.5x faster
    | \b\d+(\.\d+)?\s?%\s+(faster|slower|better|worse|more\ accurate|less\ accurate)       # 30 % faster
    | \b\d+(\.\d+)?\s?(MB|MiB|GB|GiB)\s+(peak|RSS|resident)                                # 3.1 GB peak
    )""",
    re.I | re.X,
)


def _skipped(path: Path) -> bool:
    return any(p == "__pycache__" or p.endswith(".egg-info") for p in path.parts)


def _modules() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if not _skipped(p)]


def _text_files() -> list[Path]:
    return [
        p
        for root in (SRC, DOCS)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not _skipped(p)
    ]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


MODULES = _modules()


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_module_is_at_most_600_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{_rel(path)} has {n} lines (limit {MAX_MODULE_LINES}): split it"


def long_functions_without_reason(source: str) -> list[str]:
    """``name (n lines, line k)`` for every function over the limit with no why-comment above it."""
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        n = node.end_lineno - node.lineno + 1
        if n <= MAX_FUNCTION_LINES:
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])  # 1-based
        above = lines[max(0, first - 4) : first - 1]
        if not any(WHY_LONG.match(line) for line in above):
            out.append(f"{node.name} ({n} lines, line {node.lineno})")
    return out


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_long_functions_say_why(path):
    missing = long_functions_without_reason(path.read_text(encoding="utf-8"))
    assert not missing, (
        f"{_rel(path)}: functions over {MAX_FUNCTION_LINES} lines with no '# ... long because ...' comment "
        f"in the 3 lines above: {', '.join(missing)}"
    )


def test_the_function_check_reads_comments_above_decorators():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    bare = f"def f():\n{body}\n"
    explained = f"# long because the steps share many locals\n@staticmethod\ndef f():\n{body}\n"
    far = f"# long because the steps share many locals\n\n\n\ndef f():\n{body}\n"
    assert long_functions_without_reason(bare) == [f"f ({MAX_FUNCTION_LINES + 1} lines, line 1)"]
    assert long_functions_without_reason(explained) == []
    assert long_functions_without_reason(far) != []


def test_no_words_about_how_the_work_was_organised():
    hits = [
        f"{_rel(p)}:{i}: {line.strip()[:100]}"
        for p in _text_files()
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if WORK_WORDS.search(line)
    ]
    assert not hits, "words about how the work was organised (reword them):\n" + "\n".join(hits)


def figures_in_docstrings(source: str) -> list[tuple[int, str]]:
    """(line, matched text) of every measured-looking figure in the docstrings of ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc:
            continue
        start = node.body[0].lineno
        for m in FIGURE.finditer(doc):
            out.append((start + doc[: m.start()].count("\n"), m.group(0)))
    return out


def test_docstrings_carry_no_measured_figures():
    hits = [
        f"{_rel(p)}:{line}: {text!r}"
        for p in MODULES
        for line, text in figures_in_docstrings(p.read_text(encoding="utf-8"))
    ]
    assert not hits, "measured figures in docstrings (move them to docs/):\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "text",
    [
        "Runs at 12 s per image.",
        "AP50 0.81 on BCCD.",
        "macro-F1 0.734 on the held-out fold.",
        "exact match 0.62",
        "about 3.2 images/s on the CPU",
        "40 smears/min",
        "2.5x faster than before",
    ],
)
def test_the_figure_pattern_catches(text):
    assert figures_in_docstrings(f'"""{text}"""\n')


@pytest.mark.parametrize(
    "text",
    [
        "instance F1 at IoU 0.5",
        "a box scoring >= 0.5",
        "scale 0.5 (1.0 = native 1920x1080)",
        "grayscale 15% of crops",
        "several times faster on large images",
    ],
)
def test_the_figure_pattern_leaves_parameters_alone(text):
    assert not figures_in_docstrings(f'"""{text}"""\n')
