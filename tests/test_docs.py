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


def test_the_readmes_profile_table_is_what_the_profiles_say():
    """Each row of the README's table of shipped profiles: held-out MAPE, noise floor and
    trust as the profile folder itself gives them (profiles show), and every shipped profile
    has its row."""
    from shaper_deploy.profiling.predictor import DeviceProfile, noise_of

    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| [^|]+ \| `([a-z0-9_-]+)` \|(.*)$", (ROOT / "README.md").read_text(), re.M)}
    shipped = sorted(p.parent.name for p in (ROOT / "profiles").glob("*/profile.json"))
    assert sorted(rows) == shipped
    for name, row in rows.items():
        p = DeviceProfile.load(ROOT / "profiles" / name)
        cells = [c.strip() for c in row.split("|")]
        mape = " / ".join(f"{p.model.metrics[k]['held_out']['mape']:.1%}" for k in ("fp32", "int8"))
        noise = " / ".join(f"{noise_of(p.header, k):.1%}" for k in ("fp32", "int8"))
        assert cells[2:5] == [mape, noise, "**reliable**" if p.trust["reliable"] else
                              "UNRELIABLE"], name
        assert cells[1].startswith(p.header.created[:10]), name
