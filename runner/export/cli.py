"""``python -m runner.export`` (and ``cellsparse export``): its flags and exit status."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cellsparse.commands import EXIT_USER_ERROR, command_parser, print_error
from cellsparse.errors import UserError
from runner.engine.artefacts import FORMATS
from runner.engine.plugins import import_plugins, plugin_modules
from runner.export.parity import ExportError
from runner.export.pipeline import export_run

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "runner.export",
        "Export a trained model from a run for deployment (ONNX and torch.export .pt2), checked "
        "against the eager model, with a model card.",
        "Exit status: 0 done, 1 the export or its parity check failed, 2 bad input.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (runs/<name>)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, metavar="N", help="export trial N (must be COMPLETE and feasible)")
    which.add_argument("--pick", choices=("knee", "accuracy", "budget"), default="knee",
                       help="how to choose the trial when --trial is not given (default: knee of the "
                       "accuracy/FLOPs front; budget: most accurate within --max-flops)")
    parser.add_argument("--max-flops", type=float, metavar="F",
                        help="FLOPs budget for --pick budget (default: the run's constraints.max_flops)")
    parser.add_argument("--formats", default=",".join(FORMATS), metavar="LIST",
                        help=f"comma-separated formats to write (default: {','.join(FORMATS)})")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: RUN_DIR/export/trial-N, one folder per exported trial)")
    parser.add_argument("--replace", action="store_true",
                        help="replace the export already in the output directory (refused without it)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="intra-op threads of torch and onnxruntime while checking and timing (default 1: "
                        "per-core figures)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import_plugins(plugin_modules())
        if args.max_flops is not None and args.pick != "budget":
            raise UserError("--max-flops only applies to --pick budget")
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        export_run(args.run_dir, trial=args.trial, pick=args.pick, max_flops=args.max_flops, formats=formats,
                   out=args.out, measure=not args.no_latency, threads=args.threads, replace=args.replace, log=print)
    except ExportError as err:
        print_error(err)
        return EXIT_FAILED
    except UserError as err:
        print_error(err)
        return EXIT_USER_ERROR
    return 0
