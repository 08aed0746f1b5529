"""``pyengine demo``."""

from __future__ import annotations

import click

__all__ = ["demo"]


@click.command()
@click.option("--out", "out_dir", default="demo-out", show_default=True,
              type=click.Path(file_okay=False), help="Directory for the field and the results.")
@click.option("--size", type=int, default=1536, show_default=True, help="Field size, pixels.")
@click.option("--seed", type=int, default=1, show_default=True, help="Field random seed.")
@click.option("--runner", default="auto", show_default=True, help="Runner to scan with.")
@click.option("--threads", type=int, default=None, help="CPU threads [all].")
def demo(out_dir, size, seed, runner, threads):
    """Make a small synthetic field, scan it with the demo model, and score the result."""
    from pyengine.demo.run import run_demo
    from pyengine.errors import ConfigError

    if not 256 <= size <= 8192:
        raise ConfigError(f"--size {size} is out of range; accepted: 256..8192 pixels")
    run_demo(out_dir, size=size, seed=seed, runner=runner, threads=threads, echo=click.echo)
