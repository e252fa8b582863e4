"""Every pointer into docs/ from the code, the README and the docs themselves (a page of docs/ by its path,
optionally with "#anchor", and the markdown links between the pages of docs/) names a page that exists and one of
its headings, by GitHub's anchor rule."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POINTER = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")  # in code, the README, scripts
LINK = re.compile(r"\]\(([\w-]+\.md)(?:#([\w-]+))?\)")  # markdown links between the pages of docs/


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def pointers() -> list[tuple[str, str, str | None]]:
    """(file, docs/ page, anchor or None) for every pointer into docs/ in the tracked files."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    out = []
    for f in files:
        path = ROOT / f
        if path.suffix not in (".py", ".md", ".sh") and path.name != "Makefile" or not path.is_file():
            continue
        text = path.read_text()
        out += [(f, "docs/" + page, a or None) for page, a in POINTER.findall(text)]
        if f.startswith("docs/"):
            out += [(f, "docs/" + page, a or None) for page, a in LINK.findall(text)]
    return out


def test_every_pointer_into_docs_names_a_page_and_a_heading():
    found = pointers()
    assert ("pipeline/index/table.py", "docs/design.md", "packet-index") in found  # the check reads the real pointers
    bad = [f"{f}: {page}" + (f"#{a}" if a else "") for f, page, a in found
           if not (ROOT / page).is_file()
           or (a and a != "section" and a not in anchors(ROOT / page))]  # "#section": the form, in prose
    assert bad == []


def test_anchor_follows_githubs_rule():
    assert anchor(" The paper's recipe") == "the-papers-recipe"
    assert anchor("GOP slices for the decoders that do not seek") == "gop-slices-for-the-decoders-that-do-not-seek"
    assert anchor("Checkpoints and the run record") == "checkpoints-and-the-run-record"
