"""Command line (also ``python -m mlsimkit``).

``mlsimkit run --study NAME|all --profile quick|default|paper`` executes the stage notebooks and builds the
book; ``mlsimkit build`` builds the book again from the notebooks already executed (after a failed build, say);
``mlsimkit studies`` lists the params files.
"""

from __future__ import annotations

import argparse
import sys

from .errors import MlsimkitError
from .study import PROFILES, STAGES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsimkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the stage notebooks of a study and build the book")
    p_run.add_argument("--study", default="all", help="a study name (params/<name>.yml) or 'all' (default)")
    p_run.add_argument("--profile", default="default", choices=PROFILES)
    p_run.add_argument("--stage", action="append", choices=STAGES, help="run only this stage (repeatable)")
    p_run.add_argument("--root", default=None, help="project root (default: found from the working directory)")
    p_run.add_argument("--out", default=None, help="write executed notebooks, runs/ and the book here")
    p_run.add_argument("--no-build", action="store_true", help="execute notebooks only")
    p_build = sub.add_parser("build", help="build the book from the notebooks already executed (no re-run)")
    p_build.add_argument("--root", default=None, help="project root (default: found from the working directory)")
    p_build.add_argument("--out", default=None, help="the folder a run wrote to with --out (default: the root)")
    sub.add_parser("studies", help="list the studies (params files)")
    args = parser.parse_args(argv)
    try:
        if args.command == "studies":
            from .study import available, find_root

            print("\n".join(available(find_root(args.root))))
            return 0
        if args.command == "build":
            from .runner import build_book

            print(f"Open the book: {build_book(args.out, root=args.root)}")
            return 0
        from .runner import run

        index = run(args.study, args.profile, root=args.root, out=args.out, stages=args.stage,
                    build=not args.no_build)
        if index is not None:
            print(f"Open the book: {index}")
        return 0
    except MlsimkitError as exc:
        print(f"mlsimkit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
