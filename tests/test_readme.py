"""The metric catalogue in docs/metrics.md is the one grpo/algorithm/metrics.py defines (one definition, one faithful
copy); the README's family table names every key family of it and links it; the README stays a short guide."""

import re
from pathlib import Path

import grpo.algorithm.metrics

ROOT = Path(__file__).resolve().parents[1]


def _catalogue() -> str:
    return grpo.algorithm.metrics.__doc__[grpo.algorithm.metrics.__doc__.index("axes"):].rstrip()


def _key_areas(catalogue: str) -> set[str]:
    """The part before the first '/' of every key the catalogue defines (key lines are indented 2 spaces)."""
    areas = set()
    for line in catalogue.splitlines():
        m = re.match(r"  (\S+(?:, \S+)*)", line)  # continuation lines are indented further
        if m and not line.startswith("   "):
            areas |= {key.split("/")[0] for key in m.group(1).split(", ")}
    return areas


def test_docs_catalogue_matches_the_metrics_module():
    assert _catalogue() in (ROOT / "docs" / "metrics.md").read_text()


def test_key_areas_are_read_off_the_catalogue():
    areas = _key_areas(_catalogue())
    # Hand-picked from the module docstring: one area per family, plus the bare keys.
    assert {"step", "reward", "accuracy", "zero_var", "kl", "clip", "inner", "bias", "ledger", "cf", "eval"} <= areas
    assert "punishment" not in areas and "" not in areas  # continuation lines are not keys


def test_readme_family_table_names_every_key_area_and_links_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Metric catalogue"):]
    assert "(docs/metrics.md)" in section
    missing = [a for a in sorted(_key_areas(_catalogue())) if not re.search(rf"`{re.escape(a)}[`/]", section)]
    assert not missing, f"README's metric catalogue table lacks these key families: {missing}"


def test_readme_is_a_short_guide():
    assert len((ROOT / "README.md").read_bytes()) <= 15 * 1024


def test_ci_script_fails_when_pytest_collects_nothing(tmp_path):
    """Run .ci/run against a copy whose Makefile's test target runs a pytest that collects nothing."""
    import shutil
    import subprocess
    import sys

    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "Makefile").write_text(f"test:\n\t{sys.executable} -m pytest -q -p no:cacheprovider empty_dir\n")
    (tmp_path / "empty_dir").mkdir()
    result = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "no tests ran" in result.stdout
