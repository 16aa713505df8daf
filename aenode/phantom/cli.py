"""`aenode phantom`: write a synthetic chest CT study from the command line."""
from __future__ import annotations

import argparse
import sys

from .dicom_writer import TRANSFER_SYNTAXES
from .lesions import PATTERNS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pattern", required=True, help=f"one of {', '.join(PATTERNS)}")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=None, help="number of axial slices (default: cover 320 mm)")
    p.add_argument("--slice-thickness", type=float, default=1.25, metavar="MM", help="0.5-5.0 mm (default 1.25)")
    p.add_argument("--transfer-syntax", default=TRANSFER_SYNTAXES["explicit"],
                   help="UID or one of " + ", ".join(TRANSFER_SYNTAXES))
    p.add_argument("--kernel", default="sharp", choices=("smooth", "standard", "sharp", "very_sharp"))
    p.add_argument("--random-acquisition", action="store_true",
                   help="draw thickness, kernel, dose, contrast, FOV and vendor from the seed (overrides the two above)")
    p.add_argument("--variant", default=None, help="force a pattern variant (default: from the seed)")
    p.add_argument("--no-extra-series", action="store_true", help="only the thin axial series")
    p.add_argument("--patient-name", default=None)
    p.add_argument("--patient-id", default=None)


def run(args: argparse.Namespace) -> int:
    from .acquisition import sample_acquisition
    from .dicom_writer import resolve_transfer_syntax
    from .study import generate_study

    if args.pattern not in PATTERNS:
        print(f"error: unknown pattern {args.pattern!r}; expected one of {', '.join(PATTERNS)}", file=sys.stderr)
        return 2
    try:
        ts = resolve_transfer_syntax(args.transfer_syntax)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        r = generate_study(args.out, args.pattern, args.seed, slices=args.slices,
                           slice_thickness=args.slice_thickness, transfer_syntax=ts,
                           extra_series=not args.no_extra_series, patient_name=args.patient_name,
                           patient_id=args.patient_id, kernel=args.kernel, variant=args.variant,
                           acquisition=sample_acquisition(args.seed) if args.random_acquisition else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write to output directory {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"study {r.study_instance_uid}: {r.category} ({r.pattern_variant}), seed {args.seed}")
    for _suid, desc, n, folder in r.series:
        print(f"  {desc:<24} {n:4d} files  {folder}")
    print(f"  ground truth: {r.truth_dir}")
    print(f"done in {r.seconds:.2f} s")
    return 0


def register(subparsers) -> None:
    """Add the `phantom` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("phantom", help="write a synthetic chest CT study (COVID-19 RSNA patterns)",
                              description="Write a synthetic chest CT study with ground truth beside it.")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aenode phantom")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["phantom", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
