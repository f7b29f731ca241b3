"""The ``robustopt`` command. Only this package parses flags; the layers below take values.

Every user error (a ``RobustOptError``) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from ..cpu_memory import keep_freed_memory
from ..errors import RobustOptError
from . import (
    attack_cmd,
    challenge_cmd,
    demo_cmd,
    evaluate_cmd,
    export_cmd,
    landscape_cmd,
    report_cmd,
    train_cmd,
)

COMMANDS = (attack_cmd, train_cmd, evaluate_cmd, landscape_cmd, report_cmd, export_cmd,
            challenge_cmd, demo_cmd)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(2, f"robustopt: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustopt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed on one line
        return int(exit_.code or 0)
    keep_freed_memory()  # this process is ours: reuse freed tensor memory (cpu_memory.py)
    try:
        return int(args.run(args) or 0)
    except RobustOptError as err:
        print(f"robustopt: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or device the commands did not anticipate: one line
        where = f" ({err.filename})" if err.filename else ""
        print(f"robustopt: error: {err.strerror or err}{where}: check the path, its "
              "permissions and the free disk space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
