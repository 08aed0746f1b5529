"""pyengine scan against the script an astronomer writes without it, side by side, in one run.

On a synthetic g, i field (``pyengine.synth``), for the same positions (the truth
catalog's sources, i < ``--mag-limit``, optionally a seeded random subset), with the
same model weights (the shipped demo model), each way run as its own process so that
its start-up and imports count:

1. **naive**: astropy + NumPy + PyTorch eager, what one writes today without pyengine
   (this file's hidden ``_naive`` sub-command): ``fits.open(memmap=True)`` and a
   ``WCS`` per band, ``wcs.world_to_pixel``, one ``Cutout2D`` per source and band,
   a per-cutout NumPy normalisation (the model spec's border median / MAD, asinh,
   clip, NaN fill), then the ResNet-50 in batches (``eval``, ``no_grad``), softmax,
   score.  It times its own phases (imports, model load, cutouts, normalisation,
   model) so that a miss can be analysed;
2. **pyengine fp32**: ``pyengine scan ... --runner onnxruntime --precision fp32``;
3. **pyengine int8**: the same with an int8 ONNX made beforehand (not timed) by
   ``pyengine export DEMO --precision int8`` (calibrated on its own synthetic field).

Whole-process wall time of each, alternated ``--runs`` times (naive, fp32, int8 in
each run), reported as medians and per-run speed ratios; then the agreement of the
scores (naive vs fp32, int8 vs fp32: max |score difference| and the share of equal
decisions at the model's threshold) and PASS/MISS against the targets (fp32 >= 2x
naive; int8 >= 1.5x fp32 with >= 99.5 % equal decisions).  Before timing, the naive
windows are checked to be pixel for pixel those of ``pyengine.scan.cutouts``, and each way
runs once untimed on a few positions (warm page cache, fp32 ONNX cache made).

Usage: python benchmarks/bench_vs_naive.py [--size 2048] [--seed 11] [--mag-limit 21]
       [--max-sources N] [--runs 3] [--batch 32] [--workdir DIR] [--fresh-int8]
       [--no-warmup] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WAYS = ("naive", "pyengine_fp32", "pyengine_int8")
TARGET_FP32_OVER_NAIVE = 2.0
TARGET_INT8_OVER_FP32 = 1.5
TARGET_INT8_AGREEMENT = 0.995
NAIVE_PHASES = ("imports", "model_load", "open_wcs", "cutouts", "normalise", "model", "write")


# -- the naive pipeline (runs in its own process: ``_naive``) ---------------------------------
def naive_cutouts(data, x, y, size):
    """(n, nband, size, size) float32 with one ``Cutout2D`` per source and band, NaN off-image.

    ``data``, ``x``, ``y`` are per band: the image and the 0-based pixel positions.

    Window convention: pyengine cuts [c - S/2, c + S/2) around the centre pixel
    c = floor(v + 0.5) (pyengine.coords.centre_pixel).  Cutout2D with an even size
    starts at ceil(v - S/2), i.e. c - S/2 + 1 whenever v's fractional part lies in
    (0, 0.5): a one-pixel shift for about half of all float positions.  Passing the
    centre pixel c itself (an integer) makes Cutout2D start at c - S/2, the same
    window; main() checks this against pyengine.scan.cutouts.extract_cutouts.
    """
    from astropy.nddata import Cutout2D, NoOverlapError

    nband, n = len(data), len(x[0])
    out = np.empty((n, nband, size, size), np.float32)
    for i in range(n):
        for b in range(nband):
            centre = (np.floor(x[b][i] + 0.5), np.floor(y[b][i] + 0.5))
            try:
                out[i, b] = Cutout2D(data[b], centre, (size, size), mode="partial",
                                     fill_value=np.nan).data
            except NoOverlapError:
                out[i, b] = np.nan
    return out


def naive_normalise(cutouts, pp):
    """The spec's preprocessing (``pp``, a PreprocessSpec), per cutout and band, in NumPy."""
    n, nband, size, _ = cutouts.shape
    ring = np.ones((size, size), bool)
    ring[pp.border:size - pp.border, pp.border:size - pp.border] = False
    out = np.empty_like(cutouts)
    for i in range(n):
        for b in range(nband):
            img = cutouts[i, b]
            edge = img[ring]
            background, scale = 0.0, 1.0
            if not np.isnan(edge).all():
                median = np.nanmedian(edge)
                if pp.background == "border_median":
                    background = median
                if pp.scale == "border_mad":
                    scale = max(1.4826 * np.nanmedian(np.abs(edge - median)), pp.eps)
            z = (img - np.float32(background)) / np.float32(scale)
            if pp.stretch == "asinh":
                z = np.arcsinh(z / np.float32(pp.softening))
            elif pp.stretch == "minmax":
                lo, hi = np.nanmin(z), np.nanmax(z)
                z = (z - lo) / (hi - lo) if hi > lo else np.zeros_like(z)
            elif pp.stretch == "zscore":
                sd = np.nanstd(z)
                z = (z - np.nanmean(z)) / sd if sd > 0 else np.zeros_like(z)
            if pp.clip is not None:
                z = np.clip(z, pp.clip[0], pp.clip[1])
            out[i, b] = np.where(np.isnan(img), pp.nan_fill, z)
    return out


def naive_main(argv) -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(prog="bench_vs_naive.py _naive")
    ap.add_argument("--band", nargs=2, action="append", metavar=("FITS", "HDU"), required=True)
    ap.add_argument("--positions", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", required=True, help="scores (.npz)")
    ap.add_argument("--timing", required=True, help="phase seconds (.json)")
    args = ap.parse_args(argv)
    phase = dict.fromkeys(NAIVE_PHASES, 0.0)

    import torch
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    from pyengine.models.checkpoint import load_model  # only to get the weights into torch

    t = time.perf_counter()
    phase["imports"] = t - t_start

    model = load_model(args.model)  # ClusterClassifier; only its ResNet backbone is used
    spec = model.spec
    net = model.backbone.eval()
    positive = list(spec.positive_classes)
    size = spec.cutout_size
    t, phase["model_load"] = time.perf_counter(), time.perf_counter() - t

    table = Table.read(args.positions)
    coords = SkyCoord(table["ra"], table["dec"], unit="deg")
    hduls = [fits.open(path, memmap=True) for path, _ in args.band]
    data, xs, ys = [], [], []
    for hdul, (_, hdu) in zip(hduls, args.band, strict=True):
        data.append(hdul[int(hdu)].data)
        x, y = WCS(hdul[int(hdu)].header).world_to_pixel(coords)
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    n = len(table)
    scores = np.empty(n, np.float32)
    t, phase["open_wcs"] = time.perf_counter(), time.perf_counter() - t

    with torch.no_grad():
        for s in range(0, n, args.batch):
            e = min(s + args.batch, n)
            t0 = time.perf_counter()
            cut = naive_cutouts(data, [x[s:e] for x in xs], [y[s:e] for y in ys], size)
            t1 = time.perf_counter()
            norm = naive_normalise(cut, spec.preprocess)
            t2 = time.perf_counter()
            probabilities = torch.softmax(net(torch.from_numpy(norm)), dim=1)
            scores[s:e] = probabilities[:, positive].sum(dim=1).numpy()
            t3 = time.perf_counter()
            phase["cutouts"] += t1 - t0
            phase["normalise"] += t2 - t1
            phase["model"] += t3 - t2

    t = time.perf_counter()
    np.savez(args.out, id=np.asarray(table["id"]), score=scores,
             candidate=scores >= spec.threshold)
    for hdul in hduls:
        hdul.close()
    phase["write"] = time.perf_counter() - t
    phase["total_in_process"] = time.perf_counter() - t_start
    phase["torch_threads"] = torch.get_num_threads()
    Path(args.timing).write_text(json.dumps(phase))


# -- the driver ---------------------------------------------------------------------------------
def _run(cmd, what: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{what} failed (exit {proc.returncode}):\n{' '.join(map(str, cmd))}\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def _summary(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "summary":
                return event
    raise RuntimeError(f"no summary JSON line in pyengine's output:\n{stdout[-2000:]}")


def _pyengine_exe() -> str:
    exe = Path(sys.executable).with_name("pyengine")
    return str(exe) if exe.exists() else (shutil.which("pyengine") or "pyengine")


def _field(work: Path, size: int, seed: int):
    """The synthetic field in ``work`` (made, or reused when it was made with the same args)."""
    from pyengine.synth import SynthConfig, make_field

    stamp = work / "field.json"
    want = {"size": size, "seed": seed}
    listing = work / "images.json"
    if ((work / "truth.fits").exists() and stamp.exists() and listing.exists()
            and json.loads(stamp.read_text()) == want):
        return json.loads(listing.read_text()), work / "truth.fits", 0.0
    t0 = time.perf_counter()
    res = make_field(work, SynthConfig(width=size, height=size, seed=seed))
    images = {b: [str(p), int(h)] for b, (p, h) in res.images.items()}
    (work / "images.json").write_text(json.dumps(images))
    stamp.write_text(json.dumps(want))
    return images, res.truth, time.perf_counter() - t0


def _positions(truth: Path, out: Path, mag_limit, max_sources, seed: int) -> tuple[int, int]:
    from astropy.table import Table

    t = Table.read(truth)
    keep = np.ones(len(t), bool)
    if mag_limit is not None:
        keep &= np.asarray(t["i_mag"]) < mag_limit
    idx = np.flatnonzero(keep)
    if max_sources is not None and idx.size > max_sources:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_sources, replace=False))
    pos = Table({"id": np.asarray(t["id"], np.int64)[idx],
                 "ra": np.asarray(t["ra"], np.float64)[idx],
                 "dec": np.asarray(t["dec"], np.float64)[idx]})
    pos.write(out, overwrite=True)
    return len(pos), int(keep.sum())


def _check_windows(bands, positions: Path, size: int, nsample: int = 200) -> dict:
    """naive_cutouts vs pyengine.scan.cutouts.extract_cutouts on real and shifted positions."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.nddata import Cutout2D, NoOverlapError
    from astropy.table import Table
    from astropy.wcs import WCS

    from pyengine.io.mosaic import Mosaic
    from pyengine.scan.cutouts import extract_cutouts

    t = Table.read(positions)[:nsample]
    hduls = [fits.open(p, memmap=True) for p, _ in bands]
    data = [h[int(e)].data for h, (_, e) in zip(hduls, bands, strict=True)]
    wcs = WCS(hduls[0][int(bands[0][1])].header)
    x, y = (np.asarray(v) for v in wcs.world_to_pixel(SkyCoord(t["ra"], t["dec"], unit="deg")))
    # Fractional parts on both sides of .5 and positions hanging off every edge.
    h, w = data[0].shape
    x = np.concatenate([x, np.floor(x[:20]) + 0.3, np.floor(x[:20]) + 0.5,
                        np.floor(x[:20]) + 0.7, [0.2, -0.4, w - 0.6, w - 1.2, 5.49, 40.0]])
    y = np.concatenate([y, np.floor(y[:20]) + 0.45, np.floor(y[:20]) + 0.5,
                        np.floor(y[:20]) + 0.51, [3.3, h - 0.7, -0.2, h - 2.5, 10.0, h - 1.5]])
    with Mosaic.open([f"{p}[{e}]" if int(e) else p for p, e in bands]) as mosaic:
        ref = extract_cutouts(mosaic, x, y, size).pixels
    nb = len(data)
    mine = naive_cutouts(data, [x] * nb, [y] * nb, size)

    plain_bad = 0  # Cutout2D at the float position itself, for comparison
    for i in range(x.size):
        raw = np.full((nb, size, size), np.nan, np.float32)
        for b in range(nb):
            with contextlib.suppress(NoOverlapError):
                raw[b] = Cutout2D(data[b], (x[i], y[i]), (size, size), mode="partial",
                                  fill_value=np.nan).data
        plain_bad += not np.array_equal(raw, ref[i], equal_nan=True)
    for hd in hduls:
        hd.close()
    equal = [np.array_equal(a, b, equal_nan=True) for a, b in zip(mine, ref, strict=True)]
    return {"positions": int(x.size), "mismatched": int(x.size - sum(equal)),
            "mismatched_if_float_position": int(plain_bad)}


def _agreement(a, b, threshold: float) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    da, db = a[ok] >= threshold, b[ok] >= threshold
    return {"compared": int(ok.sum()), "not_finite": int((~ok).sum()),
            "max_abs_dscore": float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else None,
            "decision_agreement": float(np.mean(da == db)) if ok.any() else None,
            "decisions_differ": int(np.sum(da != db)),
            "above_threshold": [int(da.sum()), int(db.sum())]}


def _catalog_scores(path: Path, ids: np.ndarray) -> tuple[np.ndarray, dict]:
    from astropy.table import Table

    cat = Table.read(path)
    col = "in_id" if "in_id" in cat.colnames else "id"
    score = dict(zip(np.asarray(cat[col]).tolist(), np.asarray(cat["score"]).tolist(),
                     strict=True))
    return np.array([score.get(i, np.nan) for i in ids.tolist()], np.float32), dict(cat.meta)


def _fmt_runs(values, fmt="{:.2f}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="field edge, px")
    ap.add_argument("--seed", type=int, default=11, help="field seed (and subset seed)")
    ap.add_argument("--mag-limit", type=float, default=21.0,
                    help="keep truth sources with i < this (<= 0: keep all)")
    ap.add_argument("--max-sources", type=int, default=6000,
                    help="random subset of at most this many (0: all)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32,
                    help="naive pipeline's batch size (default: pyengine's CPU batch)")
    ap.add_argument("--workdir", default=None, help="reuse the field and int8 export there")
    ap.add_argument("--fresh-int8", action="store_true", help="re-export the int8 ONNX")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from _timing import environment, print_environment, write_json

    from pyengine.models.checkpoint import DEMO_MODEL, read_spec

    env = environment()
    print_environment(env)
    spec, _ = read_spec(DEMO_MODEL)
    threshold = spec.threshold
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_vs_naive_"))
    work.mkdir(parents=True, exist_ok=True)
    images, truth, field_s = _field(work, args.size, args.seed)
    bands = [images[b] for b in spec.bands]
    positions = work / "positions.fits"
    mag_limit = args.mag_limit if args.mag_limit > 0 else None
    n, available = _positions(truth, positions, mag_limit, args.max_sources or None, args.seed)
    made = f"made in {field_s:.1f} s" if field_s else "reused"
    cut = f"i < {mag_limit:g}" if mag_limit is not None else "all magnitudes"
    subset = f", random subset of {available}" if n < available else ""
    print(f"# field {args.size}^2 px, seed {args.seed} ({made}) in {work}; {n} positions "
          f"(truth sources, {cut}{subset})")

    check = _check_windows(bands, positions, spec.cutout_size)
    print(f"# naive Cutout2D windows vs pyengine.scan.cutouts: {check['mismatched']} of "
          f"{check['positions']} differ (at the float position, unadjusted: "
          f"{check['mismatched_if_float_position']})")
    if check["mismatched"]:
        sys.exit("the naive cutouts are not pyengine's pixels; fix naive_cutouts first")

    int8 = work / "demo.int8.onnx"
    exe = _pyengine_exe()
    if args.fresh_int8 or not int8.exists():
        s, _ = _run([exe, "export", str(DEMO_MODEL), "--precision", "int8", "--out", str(int8)],
                    "pyengine export int8")
        print(f"# int8 ONNX exported in {s:.1f} s (not timed): {int8}")
    else:
        print(f"# int8 ONNX reused: {int8}")

    band_files = [p if int(e) == 0 else f"{p}[{e}]" for p, e in bands]

    def command(way: str, pos: Path, tag: str):
        out = work / f"{way}{tag}"
        if way == "naive":
            cmd = [sys.executable, str(Path(__file__).resolve()), "_naive",
                   "--positions", str(pos), "--batch", str(args.batch),
                   "--out", f"{out}.npz", "--timing", f"{out}.timing.json"]
            for p, e in bands:
                cmd += ["--band", str(p), str(e)]
            return cmd, out
        cmd = [exe, "scan", *band_files, "--catalog", str(pos), "--runner", "onnxruntime",
               "-o", f"{out}.fits", "-q", "--log-json"]
        cmd += (["--precision", "fp32"] if way == "pyengine_fp32"
                else ["--model", str(int8), "--precision", "int8"])
        Path(f"{out}.fits").unlink(missing_ok=True)
        return cmd, out

    if not args.no_warmup:
        warm = work / "warmup.fits"
        from astropy.table import Table

        Table.read(positions)[:64].write(warm, overwrite=True)
        t0 = time.perf_counter()
        for way in WAYS:
            _run(command(way, warm, "_warmup")[0], f"{way} warm-up")
        print(f"# warm-up (64 positions each, not timed): {time.perf_counter() - t0:.1f} s")

    walls = {w: [] for w in WAYS}
    summaries = {w: [] for w in WAYS if w != "naive"}
    phases = []
    for r in range(args.runs):
        for way in WAYS:
            cmd, out = command(way, positions, "")
            wall, stdout = _run(cmd, way)
            walls[way].append(wall)
            if way == "naive":
                phases.append(json.loads(Path(f"{out}.timing.json").read_text()))
            else:
                summaries[way].append(_summary(stdout))
        print(f"#   run {r + 1}/{args.runs}: " + ", ".join(
            f"{w} {walls[w][-1]:.1f} s" for w in WAYS), flush=True)

    # -- results -------------------------------------------------------------------------------
    wall_med = {w: statistics.median(v) for w, v in walls.items()}
    rate = {w: n / wall_med[w] for w in WAYS}
    own_rate = {w: statistics.median(s["rate"] for s in summaries[w]) for w in summaries}
    fp32_over_naive = [a / b for a, b in zip(walls["naive"], walls["pyengine_fp32"], strict=True)]
    int8_over_fp32 = [a / b for a, b in zip(walls["pyengine_fp32"], walls["pyengine_int8"],
                                            strict=True)]
    naive = np.load(work / "naive.npz")
    ids, s_naive = naive["id"], naive["score"]
    s_fp32, meta = _catalog_scores(work / "pyengine_fp32.fits", ids)
    s_int8, _ = _catalog_scores(work / "pyengine_int8.fits", ids)
    cat_threshold = meta.get("THRESH")
    agree_naive = _agreement(s_naive, s_fp32, threshold)
    agree_int8 = _agreement(s_int8, s_fp32, threshold)
    breakdown = {k: statistics.median(p[k] for p in phases) for k in NAIVE_PHASES}
    breakdown["startup"] = statistics.median(
        w - p["total_in_process"] for w, p in zip(walls["naive"], phases, strict=True))
    # Steady state: the per-source work alone, without start-up, imports and model load
    # (naive: cutouts + normalisation + model; pyengine: its summary's scan rate), and the
    # fixed cost of each process (whole wall time minus that work).
    naive_work = [p["cutouts"] + p["normalise"] + p["model"] for p in phases]
    steady = {"naive": n / statistics.median(naive_work), **own_rate}
    fixed = {"naive": statistics.median(w - k for w, k in zip(walls["naive"], naive_work,
                                                               strict=True))}
    for w in summaries:
        fixed[w] = statistics.median(t - s["wall_s"] for t, s in zip(walls[w], summaries[w],
                                                                      strict=True))

    print(f"\n{n} sources, {args.runs} run(s); whole-process wall time, median:")
    for w in WAYS:
        extra = (f"; pyengine's own rate {own_rate[w]:.1f}/s" if w in own_rate else
                 f"; torch threads {phases[-1]['torch_threads']}, batch {args.batch}")
        print(f"  {w:>14}: {wall_med[w]:7.2f} s  {rate[w]:7.1f} sources/s  "
              f"(runs: {_fmt_runs(walls[w])} s{extra})")
    print("  naive breakdown (median s): " + ", ".join(
        f"{k} {breakdown[k]:.2f}" for k in ("startup", *NAIVE_PHASES)))
    print("  per-source work alone (sources/s): " + ", ".join(
        f"{w} {steady[w]:.1f}" for w in WAYS) + f"; fp32/naive "
        f"{steady['pyengine_fp32'] / steady['naive']:.2f}x, int8/fp32 "
        f"{steady['pyengine_int8'] / steady['pyengine_fp32']:.2f}x")
    print("  fixed cost per process (s, wall minus that work): " + ", ".join(
        f"{w} {fixed[w]:.2f}" for w in WAYS))
    print(f"speed pyengine fp32 / naive: {statistics.median(fp32_over_naive):.2f}x "
          f"(per run: {_fmt_runs(fp32_over_naive)})")
    print(f"speed pyengine int8 / fp32:  {statistics.median(int8_over_fp32):.2f}x "
          f"(per run: {_fmt_runs(int8_over_fp32)})")
    print(f"threshold {threshold:.6g} (spec; catalog THRESH {cat_threshold})")
    for name, a in (("naive vs fp32", agree_naive), ("int8 vs fp32", agree_int8)):
        print(f"  {name}: max |dscore| {a['max_abs_dscore']:.3g}, decisions agree "
              f"{100 * a['decision_agreement']:.3f} % ({a['decisions_differ']} differ of "
              f"{a['compared']}; above threshold {a['above_threshold'][0]} vs "
              f"{a['above_threshold'][1]}; not finite {a['not_finite']})")
    targets = {
        "fp32_over_naive_speed": {"target": TARGET_FP32_OVER_NAIVE,
                                  "value": statistics.median(fp32_over_naive)},
        "int8_over_fp32_speed": {"target": TARGET_INT8_OVER_FP32,
                                 "value": statistics.median(int8_over_fp32)},
        "int8_fp32_decision_agreement": {"target": TARGET_INT8_AGREEMENT,
                                         "value": agree_int8["decision_agreement"]},
    }
    for t in targets.values():
        t["pass"] = bool(t["value"] is not None and t["value"] >= t["target"])
    print("targets:")
    print(f"  pyengine fp32 >= {TARGET_FP32_OVER_NAIVE:g}x naive:       "
          f"{targets['fp32_over_naive_speed']['value']:.2f}x  "
          f"{'PASS' if targets['fp32_over_naive_speed']['pass'] else 'MISS'}")
    print(f"  pyengine int8 >= {TARGET_INT8_OVER_FP32:g}x fp32:      "
          f"{targets['int8_over_fp32_speed']['value']:.2f}x  "
          f"{'PASS' if targets['int8_over_fp32_speed']['pass'] else 'MISS'}")
    print(f"  int8 vs fp32 decisions >= {100 * TARGET_INT8_AGREEMENT:g} %: "
          f"{100 * agree_int8['decision_agreement']:.3f} %  "
          f"{'PASS' if targets['int8_fp32_decision_agreement']['pass'] else 'MISS'}")
    if agree_naive["max_abs_dscore"] is None or agree_naive["max_abs_dscore"] > 1e-3:
        print("WARNING: naive and pyengine fp32 scores differ by more than 1e-3; the two "
              "pipelines do not compute the same thing")

    if args.json:
        write_json(args.json, {
            "env": env, "args": vars(args), "workdir": str(work), "sources": n,
            "threshold": threshold, "catalog_threshold": cat_threshold,
            "window_check": check,
            "wall_s": walls, "wall_s_median": wall_med, "sources_per_s": rate,
            "pyengine_own_rate": own_rate, "pyengine_summaries": summaries,
            "naive_phases": phases, "naive_breakdown_median": breakdown,
            "work_only_sources_per_s": steady, "fixed_cost_s": fixed,
            "speed_ratio": {"pyengine_fp32_over_naive": fp32_over_naive,
                            "pyengine_fp32_over_naive_median": statistics.median(fp32_over_naive),
                            "int8_over_fp32": int8_over_fp32,
                            "int8_over_fp32_median": statistics.median(int8_over_fp32)},
            "agreement": {"naive_vs_fp32": agree_naive, "int8_vs_fp32": agree_int8},
            "targets": targets})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_naive":
        naive_main(sys.argv[2:])
    else:
        main()
