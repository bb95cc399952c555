"""The README's examples work as written, and the README stays short.

Fenced blocks tagged ``bash`` are executed, one ``bash`` process per block, exactly as written,
with the virtualenv's ``bin`` first on ``PATH``, in a fresh scratch copy of the repository (so
relative paths such as ``vpr_ros/synth/data/...`` resolve and nothing is written to the
checkout). Blocks tagged ``console`` (need ROS, a GPU, data or minutes), ``text``, ``python``,
``json``, ``bibtex`` are shown but not run. An untagged or ``sh``/``shell`` block fails the
test, so whether a block runs is always visible in the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAX_LINES = 300
RUN = "bash"
SHOWN = {"console", "text", "python", "json", "bibtex", "yaml"}
BLOCK_TIMEOUT_S = 300
# Not copied into the scratch tree: environments, build and run outputs, and the test suite with
# its golden data (top level), and caches anywhere.
SKIP_AT_ROOT = {".git", ".venv", ".colcon", "build", "install", "log", "demo_out", "lightning_logs", "eval_out",
                ".pytest_cache", ".ruff_cache", "test"}
SKIP_ANYWHERE = {"__pycache__"}

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[^\s`]*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks of a Markdown text (indented fences, as in list items, included)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, body, j = len(opening["indent"]), [], i + 1
        while j < len(lines) and not re.match(r"^ *```\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"README.md:{i + 1}: code block is never closed")
        blocks.append(Block(i + 1, opening["lang"], "\n".join(body) + "\n"))
        i = j + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN_BLOCKS = [b for b in BLOCKS if b.lang == RUN]


def venv_bin() -> Path:
    local = REPO / ".venv" / "bin"
    return local if (local / "python").exists() else Path(sys.executable).parent


def scratch_copy(dest: Path) -> Path:
    """The repository's files, minus environments, outputs and test data, under ``dest``."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = SKIP_ANYWHERE | (SKIP_AT_ROOT if Path(folder).resolve() == REPO else set())
        return {n for n in names if n in skip or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def test_every_code_block_says_whether_it_runs() -> None:
    untagged = [f"README.md:{b.line}: ```{b.lang}" for b in BLOCKS if b.lang != RUN and b.lang not in SHOWN]
    assert not untagged, ("tag each block `bash` (run by this test) or one of "
                          f"{sorted(SHOWN)} (shown only):\n" + "\n".join(untagged))
    assert RUN_BLOCKS, "the README has no runnable bash block"


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[f"line{b.line}" for b in RUN_BLOCKS])
def test_bash_block_runs(block: Block, tmp_path: Path) -> None:
    work = scratch_copy(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(home),  # caches such as ~/.cache/vpr_ros stay in the scratch folder
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=work, env=env,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert proc.returncode == 0, (
        f"README.md:{block.line}: bash block exited with {proc.returncode}\n--- block\n{block.code}"
        f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}")


def heading_anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a Markdown page's headings (code blocks skipped)."""
    anchors, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if re.match(r"^ *```", line):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#{1,6} +(.*?)\s*$", line)):
            title = re.sub(r"[^\w\- ]", "", m[1].lower().replace("`", ""))
            anchors.add(title.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", [README, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_local_links_resolve(page: Path) -> None:
    """Links to files of the repository (and to headings of its Markdown pages) point somewhere."""
    broken = []
    for target in sorted(set(re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")))):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path) if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)} has broken links: {broken}"


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; keep it at most {MAX_LINES} and move details to docs/"
