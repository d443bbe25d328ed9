"""README's Layout section names every module and package of ``dsb/`` and nothing that
is not there, so the map a newcomer reads first stays true to the tree."""

import re

from dsb_testing import ROOT


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_exactly_the_modules_and_packages_of_dsb():
    block = _layout_block()
    dsb_lines = block.split("\ndsb/", 1)[1].split("\nexperiments/", 1)[0]
    named = set(re.findall(r"^  ([a-z_]+(?:\.py|/))", dsb_lines, flags=re.M))
    tree = {p.name for p in (ROOT / "dsb").glob("*.py") if p.name != "__init__.py"}
    tree |= {p.name + "/" for p in (ROOT / "dsb").iterdir() if (p / "__init__.py").is_file()}
    assert named == tree, (
        f"README Layout is missing {sorted(tree - named)} and names {sorted(named - tree)}, "
        "which do not exist"
    )


def test_readme_layout_names_the_top_level_folders():
    block = _layout_block()
    named = set(re.findall(r"^([a-z_]+/)", block, flags=re.M))
    want = {"conf/", "dsb/", "experiments/", "benchmarks/", "notebooks/", "docs/", "tests/"}
    assert named == want
