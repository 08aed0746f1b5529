"""The ``pyengine`` command line.

Importing this module must stay cheap: no torch, onnxruntime, tensorrt, numba
or astropy at import time.  Subcommands import what they need when they run.
User errors (:class:`pyengine.errors.PyEngineError`) print one ``Error: ...``
line and exit 1; usage errors exit 2 (click's convention).  Warnings to users
(:class:`pyengine.errors.PyEngineWarning`) print one ``Warning: ...`` line each,
once per command, whichever thread raised them.
"""

from __future__ import annotations

import sys
import warnings

import click

from pyengine import __version__
from pyengine.errors import PyEngineError, PyEngineWarning

__all__ = ["main"]


class _Group(click.Group):
    """A click group that turns PyEngineError into one line and exit code 1."""

    def invoke(self, ctx):
        with warnings.catch_warnings():
            warnings.simplefilter("always", PyEngineWarning)
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            try:
                return super().invoke(ctx)
            except PyEngineError as exc:
                click.echo(f"Error: {exc}", err=True)
                ctx.exit(1)


def _one_line_warnings(other):
    """A ``warnings.showwarning`` printing each distinct PyEngineWarning once as one
    ``Warning: ...`` line on stderr; other warnings go to ``other``."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, PyEngineWarning):
            return other(message, category, filename, lineno, file, line)
        if str(message) not in shown:
            shown.add(str(message))
            click.echo(f"Warning: {message}", err=True)
        return None

    return show


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyengine")
def main():
    """Scan FITS mosaics for star-cluster candidates with a ResNet-50."""


# Every subcommand is the click command of the same name in its job's package:
# pyengine/<job>/cli.py (the package does the work; cli.py only parses options).
from pyengine.bench.cli import bench  # noqa: E402
from pyengine.demo.cli import demo  # noqa: E402
from pyengine.evaluation.cli import evaluate  # noqa: E402
from pyengine.export.cli import export  # noqa: E402
from pyengine.info.cli import info  # noqa: E402
from pyengine.injection.cli import inject  # noqa: E402
from pyengine.scan.cli import scan  # noqa: E402
from pyengine.survey.cli import merge, survey  # noqa: E402
from pyengine.synth.cli import synth  # noqa: E402
from pyengine.training.calibrate_cli import calibrate  # noqa: E402
from pyengine.training.cli import train  # noqa: E402

for _command in (info, scan, survey, merge, demo, synth, train, calibrate, export, bench,
                 evaluate, inject):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
