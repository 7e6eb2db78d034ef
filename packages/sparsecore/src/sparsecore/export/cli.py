"""``sparsecore export``: the command-line face of :func:`sparsecore.export.export_run`."""

from __future__ import annotations

import argparse
import sys

from sparsecore.errors import SparsecoreError
from sparsecore.export.format import FORMATS

EPILOG = """examples:
  sparsecore export runs/<folder>                       runs/<folder>/model-bitmask.safetensors
  sparsecore export runs/<folder> --format csr --output lenet-csr.safetensors
  sparsecore export runs/<folder> --format dense        plain safetensors, zeros where the masks were off
the file format is described on the docs' Export page (docs/export.md)."""


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``sparsecore`` parser."""
    p = subparsers.add_parser(
        "export", help="write a run's trained model as a compact safetensors file (sparse layers compressed)",
        description="Load a run folder's verified checkpoint.pt, rebuild its model from config.json and write its "
                    "weights as a safetensors file with the sparse layers compressed; prints the file's size "
                    "against the dense float32 state dict.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (or its checkpoint.pt)")
    p.add_argument("--format", default="bitmask", metavar="FORMAT",
                   help=f"{', '.join(FORMATS)} (default bitmask): bitmask = packed bits + values, csr = CSR "
                        f"matrices, nm = N:M groups (N:M runs), dense = every tensor as is")
    p.add_argument("--output", metavar="FILE", help="file to write (default RUN_DIR/model-FORMAT.safetensors)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=export_command)
    return p


def size_lines(file_bytes: int, dense_bytes: int) -> list[str]:
    """The printed comparison of a file's size with the dense float32 state dict's."""
    ratio = file_bytes / dense_bytes if dense_bytes else float("nan")
    smaller = f" ({dense_bytes / file_bytes:.1f}x smaller)" if file_bytes < dense_bytes else ""
    return [f"file: {file_bytes:,} bytes", f"dense fp32 state dict: {dense_bytes:,} bytes",
            f"ratio: {ratio:.4f} of dense{smaller}"]


def export_command(args: argparse.Namespace) -> int:
    """Run ``sparsecore export``; errors print one line and return 2."""
    from sparsecore.export.run import export_run

    try:
        result = export_run(args.run_dir, format=args.format, output=args.output, force=args.force)
    except SparsecoreError as exc:
        print(f"sparsecore export: error: {exc}", file=sys.stderr)
        return 2
    for notice in result.notices:
        print(notice, file=sys.stderr)
    saved = result.saved
    compressed = sum(layout != "dense" for layout in saved.layouts.values())
    epochs = f"{result.epoch} epoch{'' if result.epoch == 1 else 's'}"
    print(f"wrote {saved.path} ({saved.format}; {result.model} after {epochs}; "
          f"{compressed} of {len(saved.layouts)} tensors compressed)")
    print("\n".join(size_lines(saved.file_bytes, saved.dense_fp32_bytes)))
    return 0
