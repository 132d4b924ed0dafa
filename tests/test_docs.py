"""The README and docs/: generated sections match the files they come from, the README stays short and keeps
its two commands, every docs page is linked, and the README's library example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/haste serve",
    "bash scripts/setup.sh && .venv/bin/python -m pytest",
)


def test_generated_sections_are_up_to_date():
    """Regenerating the README's levels table, docs/results.md and docs/settings.md changes nothing."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "scripts/readme_tables.py", "--check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    block = "\n".join(lines[: lines.index("```", lines.index("```bash") + 1)])
    assert all(command in block for command in COMMANDS)
    assert block.index(COMMANDS[0]) < block.index(COMMANDS[1])


@pytest.mark.parametrize("path", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_no_wording_about_how_the_project_was_made(path):
    text = path.read_text()
    assert not re.search(r"\bsessions?\b", text, re.IGNORECASE)
    assert not re.search(r"\bthis stop\b|\bstop \d+\b(?!\s?s\b)", text, re.IGNORECASE)  # "stop 3", not "stop 10 s"
    if path == README:
        assert not re.search(r"\bstop", text, re.IGNORECASE)


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = README.read_text()
    links = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert all((ROOT / link).is_file() for link in links), links
    assert {f"docs/{p.name}" for p in DOCS.glob("*.md")} <= links
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+\.(?:md|png|json))", page.read_text()):
            assert (page.parent / link).is_file(), f"{page.name}: {link}"


def test_the_readme_library_example_runs():
    code = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 0 < float(done.stdout.split()[-1]) < 1  # print(report.saving)


def test_readme_measurements_come_from_the_generated_section():
    """Outside its generated sections (the levels and load-test tables) the README states no measured figure (no
    percentage, ratio or decimal other than addresses and arXiv ids): the numbers it shows are regenerated from
    results/."""
    rest = README.read_text()
    for name in ("levels", "loadtest"):
        begin, end = rest.index(f"<!-- {name}:begin"), rest.index(f"<!-- {name}:end -->")
        rest = rest[:begin] + rest[end:]
    rest = re.sub(r"\d+\.\d+\.\d+\.\d+|\b\d{4}\.\d{5}\b", "", rest)  # IPv4 addresses, arXiv ids
    assert not re.findall(r"\d+\.\d+|\d+\s?%|\b\d+(?:\.\d+)?x\b", rest)
