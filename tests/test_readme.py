"""The README's metric catalogue is the one grpo/metrics.py defines (one definition, one faithful copy)."""

from pathlib import Path

import grpo.metrics

ROOT = Path(__file__).resolve().parents[1]


def test_readme_catalogue_matches_the_metrics_module():
    catalogue = grpo.metrics.__doc__[grpo.metrics.__doc__.index("axes"):].rstrip()
    assert catalogue in (ROOT / "README.md").read_text()


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
