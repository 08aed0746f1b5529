"""``pyengine info``."""

from __future__ import annotations

import json

import click

from pyengine import __version__

__all__ = ["info"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(as_json):
    """Versions, CPU, GPU and which runners are usable here (and why not)."""
    from pyengine.info.report import machine_info

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

