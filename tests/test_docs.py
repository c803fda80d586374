"""The docs and the code point at each other correctly.

* Every ``docs/<page>.md#<anchor>`` that a docstring, comment, example, benchmark, test or
  the README cites exists as an explicit ``{#anchor}`` on that page.
* Every dotted ``tfnorms.`` name on the front door, the Theory and the Architecture pages
  is real API.
"""

import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/(\w+)\.md#([\w-]+)")
DOTTED_NAME = re.compile(r"\btfnorms(?:\.[A-Za-z_]\w*)+")


def _explicit_anchors(page):
    return set(re.findall(r"\{#([\w-]+)\}", (ROOT / "docs" / f"{page}.md").read_text()))


def _citing_files():
    for pattern in ("tfnorms/**/*.py", "examples/*.py", "benchmarks/*.py", "tests/*.py"):
        yield from ROOT.glob(pattern)
    yield ROOT / "README.md"


def test_cited_docs_anchors_exist():
    anchors, missing, cited = {}, [], 0
    for path in _citing_files():
        for page, anchor in CITATION.findall(path.read_text()):
            cited += 1
            if page not in anchors:
                anchors[page] = _explicit_anchors(page) if (ROOT / "docs" / f"{page}.md").exists() else set()
            if anchor not in anchors[page]:
                missing.append(f"{path.relative_to(ROOT)}: docs/{page}.md#{anchor}")
    assert cited > 20
    assert not missing, f"cited anchors missing from the docs: {missing}"


def _resolves(dotted):
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_names_on_the_overview_pages_are_real_api():
    names = set()
    for page in ("index", "theory", "architecture"):
        names.update(DOTTED_NAME.findall((ROOT / "docs" / f"{page}.md").read_text()))
    assert len(names) > 10
    unknown = sorted(name for name in names if not _resolves(name))
    assert not unknown, f"names on the docs pages that tfnorms does not have: {unknown}"
