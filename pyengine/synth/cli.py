"""``pyengine synth`` (placeholder: being written)."""

import click


@click.command()
def synth():
    """Write a synthetic PAndAS-like g,i field and its truth catalog."""
    raise click.UsageError("not written yet")
