"""The layout tree in the README's Development section is the package as it is: every part and
module it names exists, and every part and module of the package is named."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "evalledger"


def _tree() -> tuple[dict[str, set[str]], set[str]]:
    """The README tree as {part: module names} and the top-level module files it names."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Layout.*?```\n(src/evalledger/\n.*?)```", text, re.S)
    assert block, "README.md has no Layout tree"
    parts: dict[str, set[str]] = {}
    top: set[str] = set()
    current = None
    for line in block.group(1).splitlines()[1:]:
        head = re.match(r"  (\w+)/\s", line)
        if head:
            current = head.group(1)
            parts[current] = set()
            rest = line[head.end():]
        elif line.startswith("              ") and current is not None:
            # a line of module names only: each must be a module of the part
            rest = re.sub(r"\(.*?\)", "", line)
            stale = [w for w in rest.split() if w != "__init__" and not (PKG / current / f"{w}.py").exists()]
            assert not stale, f"README names {stale} in {current}/, which has no such module"
        else:
            current = None
            top |= set(re.findall(r"\b([\w]+\.py)\b", line))
            continue
        parts[current] |= {w for w in re.findall(r"\b([a-z_]+)\b", re.sub(r"\(.*?\)", "", rest))
                           if w != "__init__" and (PKG / current / f"{w}.py").exists()}
    return parts, top


def test_every_part_and_module_in_the_readme_tree_exists_and_none_is_missing():
    parts, top = _tree()
    on_disk = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(parts) == on_disk
    for part, named in parts.items():
        modules = {f.stem for f in (PKG / part).glob("*.py") if f.stem != "__init__"}
        assert named == modules, (part, sorted(modules - named), sorted(named - modules))
    assert top == {f.name for f in PKG.glob("*.py")}
    assert (PKG / "datasets" / "data" / "SOURCES.md").exists()
