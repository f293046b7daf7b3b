import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_in_readme_and_docs_resolve():
    broken = []
    for doc in [ROOT / "README.md", ROOT / "profiles" / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_doc_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md")
               if p.name != "README.md" and f"({p.name})" not in index]
    assert not missing, missing
