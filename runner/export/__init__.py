"""Export the model a user picks from a run as deployable files, checked against the eager model.

    python -m runner.export runs/cells                      # the knee of the accuracy/FLOPs front
    python -m runner.export runs/cells --trial 7            # a trial by number
    python -m runner.export runs/cells --pick budget --max-flops 5e6 --formats onnx --out deploy/

Exit status: 0 done, 1 the export or its parity check failed, 2 bad input. From Python:
``export_run(run_dir, ...)`` (what is written and checked: ``runner.export.pipeline``). One job per
module: ``pick`` (which trial), ``parity`` (the checks
and timings), ``folder`` (all-or-nothing writes), ``cli`` (the flags); the model files are written by
``runner.engine.exporters`` and loaded back through ``runner.engine.artefacts``, as ``runner.predict`` loads them.
"""

from runner.export.cli import main
from runner.export.parity import ExportError
from runner.export.pipeline import ExportResult, export_run

__all__ = ["ExportError", "ExportResult", "export_run", "main"]
