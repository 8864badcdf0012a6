"""The documents stay true to the tree: every relative link in README.md and docs/*.md names a
file that exists (and an anchor a heading of that page), and the README keeps its two commands."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    heads = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_resolves():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)}: link to missing {target}"
            if anchor and file.suffix == ".md":
                assert anchor in _anchors(file), f"{page.relative_to(ROOT)}: no heading #{anchor} in {file.name}"
            checked += 1
    assert checked >= 10, "found almost no links: the pattern is broken"


def test_readme_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "python vjepa2_pipeline.py --frame_dir examples/frames --output_dir outputs/example --model random:vit_large" in text
    assert "pip install -r requirements.txt -r requirements-test.txt && python -m pytest -q" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci
