"""The comparator: align both sides' segment sets, explain every difference, measure freshness, report.

Entry points: ``run_comparison`` (files in, ``parity.json`` / ``mismatches.jsonl`` /
``report.html`` / ``summary.md`` out) and ``compare_inputs`` (inputs already in memory).
"""

from compare.comparison import Comparison, compare_inputs, run_comparison
from compare.parity import ParityResult

__all__ = ["Comparison", "ParityResult", "compare_inputs", "run_comparison"]
