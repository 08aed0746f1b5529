"""The ``pyengine`` command line.

Importing this module must stay cheap: no torch, onnxruntime, tensorrt, numba
or astropy at import time.  Subcommands import what they need when they run.
User errors (:class:`pyengine.errors.PyEngineError`) print one ``Error: ...``
line and exit 1; usage errors exit 2 (click's convention).
"""

from __future__ import annotations

import json
import sys

import click

from pyengine import __version__
from pyengine.errors import PyEngineError

__all__ = ["main"]


class _Group(click.Group):
    """A click group that turns PyEngineError into one line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PyEngineError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyengine")
def main():
    """Scan FITS mosaics for star-cluster candidates with a ResNet-50."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(as_json):
    """Versions, CPU, GPU and which runners are usable here (and why not)."""
    from pyengine.info import machine_info

    report = machine_info()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"pyengine {__version__} on Python {report['python']} ({report['platform']})")
    click.echo(f"CPU: {report['cpu']}, {report['threads']} threads")
    if report["gpus"]:
        for g in report["gpus"]:
            click.echo(f"GPU: {g['name']} ({g['memory']}, compute {g['compute_capability']}, "
                       f"driver {g['driver']})")
    else:
        click.echo("GPU: none found")
    click.echo("Packages:")
    for name, version in report["packages"].items():
        click.echo(f"  {name:<12} {version or '-'}")
    click.echo("Runners:")
    for r in report["runners"]:
        click.echo(f"  {r['name']:<12} {'usable' if r['usable'] else 'unusable'}: {r['detail']}")


# Subcommands that live in their own modules register here.
from pyengine.bench import bench  # noqa: E402
from pyengine.demo import demo  # noqa: E402
from pyengine.export.cli import export  # noqa: E402
from pyengine.scan_cli import scan  # noqa: E402
from pyengine.synth.cli import synth  # noqa: E402
from pyengine.train_cli import train  # noqa: E402

main.add_command(scan)
main.add_command(demo)
main.add_command(synth)
main.add_command(train)
main.add_command(export)
main.add_command(bench)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
