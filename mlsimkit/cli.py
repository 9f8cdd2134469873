"""Command line (also ``python -m mlsimkit``).

``mlsimkit run --study NAME|all --profile P``   execute the stage notebooks (after ``check``) and build the book
``mlsimkit build``                              build the book again from the notebooks already executed
``mlsimkit check --study NAME [--profile P]``   validate a study's params file, schema and data; list every problem
``mlsimkit new STUDY --data CSV --outcome COL``  draft a study (schema, params, book page, toc) from a data file
``mlsimkit toc --study NAME``                   regenerate a study's part of ``_toc.yml`` from its params file
``mlsimkit studies``                            list the studies (params files)

A profile is any name defined under ``profiles:`` in the study's params file (quick, default, paper, or yours).
"""

from __future__ import annotations

import argparse
import sys

from .errors import MlsimkitError
from .study import STAGES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsimkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the stage notebooks of a study and build the book")
    p_run.add_argument("--study", default="all", help="a study name (params/<name>.yml) or 'all' (default)")
    p_run.add_argument("--profile", default="default", help="a profile defined in the params file (default: default)")
    p_run.add_argument("--stage", action="append", choices=STAGES, help="run only this stage (repeatable)")
    p_run.add_argument("--root", default=None, help="project root (default: found from the working directory)")
    p_run.add_argument("--out", default=None, help="write executed notebooks, runs/ and the book here")
    p_run.add_argument("--no-build", action="store_true", help="execute notebooks only")
    p_build = sub.add_parser("build", help="build the book from the notebooks already executed (no re-run)")
    p_build.add_argument("--root", default=None, help="project root (default: found from the working directory)")
    p_build.add_argument("--out", default=None, help="the folder a run wrote to with --out (default: the root)")
    sub.add_parser("studies", help="list the studies (params files)")
    p_check = sub.add_parser("check", help="validate a study's params file, schema and data (every problem at once)")
    p_check.add_argument("--study", required=True, help="a study name (params/<name>.yml)")
    p_check.add_argument("--profile", default=None, help="check only this profile (default: every profile)")
    p_check.add_argument("--root", default=None, help="project root (default: found from the working directory)")
    p_check.add_argument("--no-data", action="store_true", help="skip loading the data (params and schema only)")
    p_new = sub.add_parser("new", help="draft a study from a data file: schema, params, book page, toc entry")
    p_new.add_argument("study", help="name of the new study (params/<study>.yml)")
    p_new.add_argument("--data", required=True, help="a CSV (students in rows) or a folder holding one")
    p_new.add_argument("--outcome", required=True, help="the numerical student-level outcome column")
    p_new.add_argument("--cluster", default=None, help="the school identifier column (default: inferred)")
    p_new.add_argument("--id", action="append", default=[], help="a further identifier column (repeatable)")
    p_new.add_argument("--objective", default="prediction", help="prediction (default) or recovery")
    p_new.add_argument("--root", default=None, help="project root (default: found from the working directory)")
    p_new.add_argument("--force", action="store_true", help="overwrite an existing study of that name")
    p_toc = sub.add_parser("toc", help="regenerate a study's part of _toc.yml from its params file")
    p_toc.add_argument("--study", required=True)
    p_toc.add_argument("--root", default=None)
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
        if args.command == "check":
            return _check(args)
        if args.command == "new":
            from .new_study import new
            from .study import find_root

            new(args.study, args.data, args.outcome, root=find_root(args.root), cluster=args.cluster, ids=args.id,
                objective=args.objective, force=args.force)
            return _check(argparse.Namespace(study=args.study, profile=None, root=args.root, no_data=False))
        if args.command == "toc":
            from .study import find_root
            from .toc import add_study

            print(f"updated {add_study(args.study, find_root(args.root))}")
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


def _check(args) -> int:
    import time

    from .check import check

    t0 = time.perf_counter()
    problems = check(args.study, args.profile, args.root, data=not args.no_data)
    took = time.perf_counter() - t0
    if problems:
        print(f"mlsimkit check: study '{args.study}': {len(problems)} problem(s) ({took:.1f} s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"mlsimkit check: study '{args.study}' is ready to run ({took:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
