"""Analysis of grpo-lab sweeps: load run dirs, aggregate over seeds, plot, write a report.

Works from run directories alone (config.json, metrics.jsonl, summary.json, sweep.json) and never
imports torch. Entry point after a sweep: `analysis.report.write_report(sweep_dirs)`, or
`python -m analysis.report <sweep-dir>...`.
"""

from analysis.load import AnalysisError, AnalysisWarning, load_runs, load_statuses

__all__ = ["AnalysisError", "AnalysisWarning", "load_runs", "load_statuses"]
