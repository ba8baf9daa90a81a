"""Every ```python block in the docs runs.

Each block is executed on its own, in a fresh namespace, so each must import what it uses. The
code is compiled with the markdown file as its file name and padded so that line numbers in a
traceback are line numbers in the markdown file.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ROOT / "docs" / "concepts.md"
README = ROOT / "README.md"


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, code) for every ```python fenced block; [] if no file."""
    if not path.is_file():
        return []
    blocks: list[tuple[int, str]] = []
    start: int | None = None
    code: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if start is None:
            if stripped == "```python":
                start, code = number, []
        elif stripped == "```":
            blocks.append((start, "\n".join(code) + "\n"))
            start = None
        else:
            code.append(line)
    if start is not None:
        raise ValueError(f"{path.name}:L{start}: ```python block is never closed")
    return blocks


def doc_params(path: Path) -> list[Any]:
    return [
        pytest.param(path, line, code, id=f"{path.name}:L{line}")
        for line, code in python_blocks(path)
    ]


@pytest.mark.parametrize(("path", "line", "code"), doc_params(CONCEPTS) + doc_params(README))
def test_doc_block_runs(path: Path, line: int, code: str) -> None:
    # Pad with newlines so the block's first line keeps its line number in the markdown file.
    source = "\n" * line + code
    namespace = {"__name__": f"docs_{path.stem}_L{line}"}
    try:
        exec(compile(source, str(path), "exec"), namespace)
    except Exception:
        pytest.fail(
            f"{path.name}:L{line}: the python block raised\n{traceback.format_exc()}",
            pytrace=False,
        )


def test_concepts_has_blocks() -> None:
    # Guards against the parser silently finding nothing (which would skip every test above).
    blocks = python_blocks(CONCEPTS)
    assert len(blocks) >= 11, f"expected a snippet per concept in {CONCEPTS}, found {len(blocks)}"


def test_python_blocks_parses_fences(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# t\n\n```python\nx = 1\n\nassert x == 1\n```\n\n```\nnot python\n```\n"
        "> ```\n> quoted\n> ```\n\n```python\ny = 2\n```\n",
        encoding="utf-8",
    )
    assert python_blocks(doc) == [(3, "x = 1\n\nassert x == 1\n"), (16, "y = 2\n")]
    assert python_blocks(tmp_path / "missing.md") == []
    (tmp_path / "open.md").write_text("```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="L1"):
        python_blocks(tmp_path / "open.md")
