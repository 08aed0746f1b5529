"""``pyengine demo``."""

from __future__ import annotations

import click

__all__ = ["demo"]


@click.command()
@click.option("--out", "out_dir", default="demo-out", show_default=True,
              type=click.Path(file_okay=False), help="Directory for the data and the results.")
@click.option("--survey", "grid", default="2x2", show_default=True, metavar="COLSxROWS",
              help="The synthetic survey: COLSxROWS overlapping fields of --size px, scanned "
                   "as a survey within a circle, scored per field and in total.")
@click.option("--single", is_flag=True,
              help="Instead: one synthetic field (--size px), scanned whole, with DS9 regions "
                   "and an overview PNG.")
@click.option("--size", type=int, default=None,
              help="Field size, pixels [768 per survey field, 1536 for --single].")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed of the sky.")
@click.option("--runner", default="auto", show_default=True, help="Runner to scan with.")
@click.option("--threads", type=int, default=None, help="CPU threads [all].")
def demo(out_dir, grid, single, size, seed, runner, threads):
    """Make a small synthetic survey (or, with --single, one field), scan it with the demo
    model, and score the result against its truth."""
    from pyengine.demo.run import run_demo
    from pyengine.errors import ConfigError

    if single:
        size = 1536 if size is None else size
        if not 256 <= size <= 8192:
            raise ConfigError(f"--size {size} is out of range; accepted: 256..8192 pixels")
        run_demo(out_dir, size=size, seed=seed, runner=runner, threads=threads, echo=click.echo)
        return
    import re

    from pyengine.demo.survey import run_demo_survey

    m = re.fullmatch(r"(\d+)x(\d+)", grid)
    if not m or not (1 <= int(m.group(1)) <= 6 and 1 <= int(m.group(2)) <= 6):
        raise ConfigError(f"--survey {grid!r} is not accepted; accepted: COLSxROWS, each "
                          "1..6, e.g. 2x2")
    field = 768 if size is None else size
    if not 256 <= field <= 4096:
        raise ConfigError(f"--size {field} is out of range for a survey; accepted: "
                          "256..4096 pixels per field")
    run_demo_survey(out_dir, grid=(int(m.group(1)), int(m.group(2))), field_size=field,
                    seed=seed, runner=runner, threads=threads, echo=click.echo)
