"""``robustopt report``: one self-contained HTML page for one or several run directories."""

from __future__ import annotations

import argparse

from ..report import write_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of runs",
                       description="One HTML file (images embedded, opens offline) with each "
                       "run's configuration, training curves, evaluation table with sanity "
                       "verdicts, eps sweep and the figures in its plots/ folder.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the HTML (default: RUN/report.html for one run; "
                   "required for several)")
    p.add_argument("--title", help="page title")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = write_report(args.runs, args.out, args.title)
    print(f"report written to {path}")
    return 0
