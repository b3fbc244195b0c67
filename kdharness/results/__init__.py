"""Comparison tooling: read run summaries, aggregate over seeds, compare methods, render.

Pure functions only (no argument parsing, no printing): `tools/leaderboard.py` and
`tools/sweep.py` are thin command lines over them, and notebooks can use them directly::

    from kdharness.results import load_summaries, aggregate, render_markdown, load_reference
    summaries, warnings = load_summaries(["output"])
    print(render_markdown(aggregate(summaries), load_reference()))
"""
from kdharness.results.reference import ReferenceDataError, ReferenceFigure, load_reference
from kdharness.results.stats import PairedComparison, paired_comparison, t_cdf, t_ppf, t_two_sided_p
from kdharness.results.summaries import (
    VANILLA,
    Cell,
    Leaderboard,
    MethodComparison,
    PairRow,
    RunSummary,
    SummaryError,
    aggregate,
    compare,
    find_summary_files,
    ickd_baselines,
    load_summaries,
    read_summary,
    strip_seed,
)
from kdharness.results.table import (
    format_cell,
    render_comparison_csv,
    render_comparison_markdown,
    render_csv,
    render_markdown,
)

__all__ = [
    "VANILLA",
    "Cell",
    "Leaderboard",
    "MethodComparison",
    "PairRow",
    "PairedComparison",
    "ReferenceDataError",
    "ReferenceFigure",
    "RunSummary",
    "SummaryError",
    "aggregate",
    "compare",
    "find_summary_files",
    "format_cell",
    "ickd_baselines",
    "load_reference",
    "load_summaries",
    "paired_comparison",
    "read_summary",
    "render_comparison_csv",
    "render_comparison_markdown",
    "render_csv",
    "render_markdown",
    "strip_seed",
    "t_cdf",
    "t_ppf",
    "t_two_sided_p",
]
