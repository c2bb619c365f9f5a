"""The README's metric catalogue is the one grpo/metrics.py defines (one definition, one faithful copy)."""

from pathlib import Path

import grpo.metrics

ROOT = Path(__file__).resolve().parents[1]


def test_readme_catalogue_matches_the_metrics_module():
    catalogue = grpo.metrics.__doc__[grpo.metrics.__doc__.index("axes"):].rstrip()
    assert catalogue in (ROOT / "README.md").read_text()


def test_ci_script_fails_when_pytest_collects_nothing():
    text = (ROOT / ".ci" / "run").read_text()
    assert "make test" in text and '"$rc" -eq 5' in text and "exit 1" in text
