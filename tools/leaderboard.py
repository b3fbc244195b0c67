"""Leaderboard of finished runs: `python tools/leaderboard.py RUN_DIR... [options]`.

Reads every complete summary.json under the given directories and prints one row per
teacher/student pair and one column per method, each cell `mean ± std (n seeds)`, beside
the teacher, the vanilla student and the published figures: top-1 for classification
runs, mIoU for segmentation runs (each dataset's table says which). `--compare A B` answers
"does A beat B beyond seed noise?" with a paired t analysis over seeds. `--sensitivity DIR`
draws the paper's sensitivity figures from runs that differ from their config in one
ICKD.* override, and prints their tables instead of the leaderboard. `--cost`,
`--diagnostics` and `--fit` print, per leaderboard cell, the runs' wall time, their last-epoch
diagnostics (ICKD's `picd_to_base`, `pos_sim`, ...) and how well they fit their own training
images against the test set.
"""
from __future__ import annotations

import argparse
import sys

from kdharness.results.reference import ReferenceDataError, load_reference
from kdharness.results.summaries import aggregate, compare, ickd_baselines, load_summaries
from kdharness.results.table import (
    render_comparison_csv,
    render_comparison_markdown,
    render_csv,
    render_markdown,
)

EPILOG = """examples:
  python tools/leaderboard.py output/
  python tools/leaderboard.py output/ --format csv --output results.csv --plot results.png
  python tools/leaderboard.py output/ --compare ICKD+KD KD --compare ICKD+DKD DKD
  python tools/leaderboard.py output/ --compare-ickd          # every ICKD column vs its baseline
  python tools/leaderboard.py output/ --by label              # tell apart variants of one method
  python tools/leaderboard.py output/ --cost                  # wall time per cell
  python tools/leaderboard.py output/ --diagnostics           # ICKD's last-epoch diagnostics per cell
  python tools/leaderboard.py output/ --fit                   # training-image vs test score (LOG.EVAL_TRAIN_SET runs)
  python tools/leaderboard.py output/ --sensitivity figures/  # figures/sensitivity_fig4.png, _fig5.png, ickd_all_fig2.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leaderboard.py",
        description=__doc__.split("\n\n", 1)[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories searched recursively for summary.json (or summary.json files)")
    parser.add_argument("--by", choices=("method", "label"), default="method",
                        help="column per method name (default) or per run name without the seed override, "
                             "to separate variants that share a method name")
    parser.add_argument("--metric", choices=("best", "last"), default="best",
                        help="best value over epochs (default, as the published tables) or the last epoch's; "
                             "top-1 for classification runs, mIoU for segmentation runs")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="output format (default: markdown)")
    parser.add_argument("--output", metavar="FILE", help="write the table (or comparison) to FILE instead of stdout")
    parser.add_argument("--plot", metavar="FILE.png", help="also write a PNG: accuracy per method per pair, error bars = std over seeds")
    parser.add_argument("--curves", metavar="FILE.png",
                        help="also write a PNG of learning curves: test top-1 (and top-1 on the training images, "
                             "where LOG.EVAL_TRAIN_SET recorded it) per evaluated epoch, one line per run")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"), default=[],
                        help="paired comparison of column A against column B on every pair, matched by seed "
                             "(repeatable; 'vanilla' is a column). Prints comparisons instead of the leaderboard")
    parser.add_argument("--compare-ickd", action="store_true",
                        help="compare every ICKD column with its baseline (ICKD+KD vs KD, ICKD vs vanilla, ...)")
    parser.add_argument("--sensitivity", metavar="DIR",
                        help="write the paper's figures from one-factor ICKD sweeps into DIR: sensitivity_fig4.png "
                             "(ICKD.BETA1, K, TAU, BETA2), sensitivity_fig5.png (ICKD.PICD_WEIGHT, NICD_WEIGHT), "
                             "ickd_all_fig2.png (ICKD.ALL_SAME_CLASS); prints their tables instead of the leaderboard")
    parser.add_argument("--cost", action="store_true",
                        help="print each cell's wall time (runs, median and total minutes, from summary.json) "
                             "instead of the leaderboard")
    parser.add_argument("--diagnostics", action="store_true",
                        help="print each cell's last-epoch diagnostics (ICKD: picd_to_base, pos_sim, ...), "
                             "mean over its runs, instead of the leaderboard")
    parser.add_argument("--fit", action="store_true",
                        help="print each cell's score on its own training images and on the test set at the last "
                             "evaluation, and the gap (runs with LOG.EVAL_TRAIN_SET), instead of the leaderboard")
    parser.add_argument("--baseline", metavar="METHOD",
                        help="with --sensitivity: the method drawn as the baseline line (default: the ICKD.BASE "
                             "method of each sweep, vanilla for NONE, DML for online)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    parser.add_argument("--no-reference", action="store_true", help="leave out the published figures")
    parser.add_argument("--include-skipped", action="store_true",
                        help="also rank runs that skipped training steps for a non-finite loss (SOLVER.NAN_POLICY skip)")
    parser.add_argument("--reference", metavar="CSV", help="published figures to use instead of the packaged ones "
                        "(columns: dataset,teacher,student,method,top1,source)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    views = [flag for flag, on in (("--compare/--compare-ickd", args.compare or args.compare_ickd),
                                   ("--sensitivity", args.sensitivity), ("--cost", args.cost),
                                   ("--diagnostics", args.diagnostics), ("--fit", args.fit)) if on]
    if len(views) > 1:
        parser.error(f"{' and '.join(views)} each print their own view; give one")
    if (args.cost or args.diagnostics or args.fit) and args.format != "markdown":
        parser.error("--cost, --diagnostics and --fit print Markdown only; leave out --format")
    try:
        summaries, warnings = load_summaries(args.run_dirs, include_skipped=args.include_skipped,
                                             defaults=default_settings())
        reference = [] if args.no_reference else load_reference(args.reference)
    except (FileNotFoundError, ReferenceDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.sensitivity:
        return write_sensitivity(args)
    board = aggregate(summaries, metric=args.metric, by=args.by)
    for message in warnings + board.warnings:
        print(f"warning: {message}", file=sys.stderr)
    if args.cost or args.diagnostics or args.fit:
        from kdharness.results.run_facts import render_cost_markdown, render_diagnostics_markdown, render_fit_markdown

        render = render_cost_markdown if args.cost else render_diagnostics_markdown if args.diagnostics else render_fit_markdown
        return _emit(render(board, summaries), args.output)
    if not board.rows:
        print(f"error: no complete run summaries under {', '.join(args.run_dirs)}", file=sys.stderr)
        return 1

    comparisons = [tuple(pair) for pair in args.compare]
    if args.compare_ickd:
        found = ickd_baselines(board)
        if not found:
            print("warning: --compare-ickd: no ICKD column has its baseline among the runs", file=sys.stderr)
        comparisons += [pair for pair in found if pair not in comparisons]
    if comparisons:
        parts = []
        for index, (a, b) in enumerate(comparisons):
            try:
                results = compare(board, a, b, confidence=args.confidence)
            except (KeyError, ValueError) as error:
                print(f"error: --compare {a} {b}: {error.args[0]}", file=sys.stderr)
                return 2
            if args.format == "csv":
                parts.append(render_comparison_csv(results, a, b, header=index == 0))
            else:
                name = board.metric_name({c.dataset for c in results} or None)
                parts.append(render_comparison_markdown(results, a, b, metric=args.metric, metric_name=name))
        text = "".join(parts) if args.format == "csv" else "\n".join(parts)
    else:
        text = render_csv(board, reference) if args.format == "csv" else render_markdown(board, reference)

    _emit(text, args.output)
    if args.plot:
        from kdharness.results.plot import plot_leaderboard

        try:
            plot_leaderboard(board, args.plot, reference)
        except ImportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.curves:
        from kdharness.results.plot import plot_curves

        try:
            plot_curves(board, summaries, args.curves)
        except (ImportError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.curves}", file=sys.stderr)
    return 0


def default_settings() -> dict:
    """The settings of today's default config, plugins' nodes included: what a run recorded
    before a key existed trained with (`load_summaries`)."""
    from kdharness.compose import load_builtin_components, load_plugins
    from kdharness.config import CFG
    from kdharness.results.settings import settings_from_config

    load_builtin_components()
    load_plugins()
    return settings_from_config(CFG.dump())  # as YAML, the form a summary records (lists, not tuples)


def _emit(text: str, output: str | None) -> int:
    """Write to --output, or to stdout."""
    if output:
        with open(output, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def write_sensitivity(args: argparse.Namespace) -> int:
    """`--sensitivity DIR`: one PNG per paper figure that has runs, and the sweeps' tables."""
    import os

    from kdharness.results.sensitivity import FIGURES, ICKD_ALL, load_sweep_runs, render_sensitivity_markdown, sweeps

    runs, warnings = load_sweep_runs(args.run_dirs)
    keys = [param.key for params in FIGURES.values() for param in params] + [ICKD_ALL.key]
    found, more = sweeps(runs, keys, metric=args.metric, baseline=args.baseline)
    for message in warnings + more:
        print(f"warning: {message}", file=sys.stderr)
    if not found:
        print(f"error: no ICKD runs under {', '.join(args.run_dirs)} differ from their config in one of "
              f"{', '.join(keys)} (run e.g. tools/train.py --cfg C ICKD.K 32)", file=sys.stderr)
        return 1
    try:
        from kdharness.results.plot import plot_ickd_all, plot_sensitivity
    except ImportError as error:  # pragma: no cover - matplotlib is a test dependency
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.sensitivity, exist_ok=True)
    titles = {"fig4": "sensitivity to beta1, K, tau1, beta2 (cf. the paper's Fig. 4)",
              "fig5": "sensitivity to the loss weights (cf. the paper's Fig. 5)"}
    written = []
    for name, params in FIGURES.items():
        if any(sweep.key in {p.key for p in params} for sweep in found):
            path = os.path.join(args.sensitivity, f"sensitivity_{name}.png")
            plot_sensitivity(found, params, path, title=titles.get(name, ""))
            written.append(path)
    if any(sweep.key == ICKD_ALL.key for sweep in found):
        path = os.path.join(args.sensitivity, "ickd_all_fig2.png")
        plot_ickd_all(found, path)
        written.append(path)
    _emit(render_sensitivity_markdown(found, metric=args.metric), args.output)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
