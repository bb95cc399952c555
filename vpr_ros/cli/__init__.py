"""``vpr-ros`` command line: one entry point, one module per subcommand group.

Errors from bad input (:class:`vpr_ros.errors.VprError`) print one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vpr_ros.cli import describe, evaluate, export, maps, visualize
from vpr_ros.cli.arguments import CheckedParser
from vpr_ros.cli.common import LOG
from vpr_ros.errors import VprError


def build_parser() -> argparse.ArgumentParser:
    parser = CheckedParser(prog="vpr-ros", description="Visual place recognition tools")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (describe, evaluate, maps, visualize, export):
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except VprError as exc:  # bad input: one clear line, no traceback
        LOG.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
