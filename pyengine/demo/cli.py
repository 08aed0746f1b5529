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
@click.option("--survey", "grid", default=None, metavar="COLSxROWS",
              help="Instead: a synthetic survey of COLSxROWS overlapping fields of --size "
                   "px (default 768 here), scanned as a survey within a circle, scored per "
                   "field and in total.")
def demo(out_dir, size, seed, runner, threads, grid):
    """Make a small synthetic field, scan it with the demo model, and score the result."""
    from pyengine.demo.run import run_demo
    from pyengine.errors import ConfigError

    if grid is not None:
        import re

        from pyengine.demo.survey import run_demo_survey

        m = re.fullmatch(r"(\d+)x(\d+)", grid)
        if not m or not (1 <= int(m.group(1)) <= 6 and 1 <= int(m.group(2)) <= 6):
            raise ConfigError(f"--survey {grid!r} is not accepted; accepted: COLSxROWS, each "
                              "1..6, e.g. 2x2")
        field = 768 if size == 1536 else size
        if not 256 <= field <= 4096:
            raise ConfigError(f"--size {size} is out of range for --survey; accepted: "
                              "256..4096 pixels per field")
        run_demo_survey(out_dir, grid=(int(m.group(1)), int(m.group(2))), field_size=field,
                        seed=seed, runner=runner, threads=threads, echo=click.echo)
        return

    if not 256 <= size <= 8192:
        raise ConfigError(f"--size {size} is out of range; accepted: 256..8192 pixels")
    run_demo(out_dir, size=size, seed=seed, runner=runner, threads=threads, echo=click.echo)
