"""The printed tables and the summary of benchmarks/bench_gpu.py (and of gpu_check.sh,
which prints the summary again last): formatting, the sections' tables, the published
anchor (a figure from elsewhere, never mixed with the measurements), and the summary
computed from the sections' entries."""

from __future__ import annotations

__all__ = [
    "ANCHOR",
    "E2E_GOAL",
    "M31_PIXELS",
    "anchor_block",
    "fmt",
    "print_anchor",
    "print_header",
    "print_section",
    "print_summary",
    "print_table",
    "summary_block",
    "torch_info",
]

E2E_GOAL = 0.9
# M31 within 30 kpc of its centre in PAndAS (Zhang et al. 2025): about 15 deg^2,
# ~5.6e9 pixels per band; the projection scans it on a grid (a position every
# --m31-stride px), the figure a survey run of pyengine would take at the measured rate.
M31_PIXELS = 5.6e9

# The published anchor: a figure from elsewhere, printed apart from the measurements.
ANCHOR_IMAGES_PER_S = 88_700
ANCHOR_SIZE, CUTOUT_SIZE = 224, 64
FLOPS_RATIO = (ANCHOR_SIZE / CUTOUT_SIZE) ** 2  # 12.25: convolutions scale with H x W
ANCHOR = {
    "what": "TensorRT INT8 ResNet-50, 224x224 images, one H100, MLPerf Inference v4.0 "
            "(datacenter, Offline scenario)",
    "images_per_s": ANCHOR_IMAGES_PER_S,
    "flops_ratio": FLOPS_RATIO,
    "flops_ratio_how": "(224/64)^2 = 12.25: every convolution's FLOPs scale with its output "
                       "H x W, which shrinks by (224/64)^2 at the same strides; the final "
                       "fully connected layer does not scale, and 2 input bands instead of "
                       "3 change only the first convolution (both negligible)",
    "scaled_cutouts_per_s": ANCHOR_IMAGES_PER_S * FLOPS_RATIO,
    "label": "anchor scaled by FLOPs, not a measurement",
    "caveat": "an upper bound for INT8 TensorRT: small 64x64 inputs use the GPU less "
              "efficiently than 224x224 ones, and pyengine's torch runner runs fp16/bf16",
}


# -- formatting ------------------------------------------------------------------------------
def fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def print_table(title: str, columns: list[tuple[str, str, int]], rows: list[dict]) -> None:
    """``columns``: (header, key, decimals); a row's ``status`` other than ok shows its reason."""
    print(f"\n== {title} ==")
    if not rows:
        print("   (nothing measured)")
        return
    cells = [[fmt(r.get(key), d) for _, key, d in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(columns)]
    print("   " + "  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths, strict=True)))
    for r, c in zip(rows, cells, strict=True):
        line = "   " + "  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True))
        if r.get("status") != "ok":
            line += f"  [{r.get('status')}: {r.get('reason')}]"
        print(line)


# -- report ------------------------------------------------------------------------------------
def torch_info(torch, device: str) -> dict:
    info = {"version": torch.__version__, "cuda_build": torch.version.cuda,
            "cudnn": None, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "device": device, "gpu": None}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpu"] = {"name": torch.cuda.get_device_name(device),
                       "capability": f"{props.major}.{props.minor}",
                       "memory_gib": props.total_memory / 2**30,
                       "multiprocessors": props.multi_processor_count}
    return info


def print_header(payload: dict) -> None:
    t, m = payload["torch"], payload["model"]
    print(f"# torch {t['version']} (CUDA build {t['cuda_build']}, cuDNN {t['cudnn']}, "
          f"cudnn.benchmark {t['cudnn_benchmark']}); device {t['device']}")
    if t["gpu"]:
        g = t["gpu"]
        print(f"# GPU: {g['name']}, compute capability {g['capability']}, "
              f"{g['memory_gib']:.1f} GiB, {g['multiprocessors']} SMs")
    print(f"# model: {m['path']} (sha256 {m['sha256'][:12]}), {m['arch']}, bands "
          f"{','.join(m['bands'])}, cutout {m['cutout_size']} px")
    a = payload["args"]
    print(f"# {'SMOKE run (tiny sizes) ' if a['smoke'] else ''}batches {a['batches']}; "
          f"precisions {a['precisions']}; repeats {a['repeats']} (median reported); field "
          f"{a['field']}^2 px, grid stride {a['stride']}, tile core {a['core']}; end-to-end "
          f"batch {a['e2e_batch']}; threads {a['threads']}; budget {a['budget']:.0f} s",
          flush=True)


MODEL_COLUMNS = [("precision", "precision", 0), ("graphs", "cuda_graphs", 0),
                 ("batch", "batch", 0), ("input", "input", 0), ("dtype", "input_dtype", 0),
                 ("stem", "pad_channels", 0), ("flight", "in_flight", 0),
                 ("cutouts/s", "cutouts_per_s", 0), ("min", "cutouts_per_s_min", 0),
                 ("max", "cutouts_per_s_max", 0), ("setup s", "setup_s", 1),
                 ("peak MiB", "peak_gpu_mib", 0)]
H2D_COLUMNS = [("memory", "memory", 0), ("dtype", "dtype", 0), ("batch", "batch", 0),
               ("MB", "mb", 1), ("GB/s (events)", "gb_per_s", 2), ("min", "gb_per_s_min", 2),
               ("max", "gb_per_s_max", 2), ("GB/s (wall)", "wall_gb_per_s", 2)]
E2E_COLUMNS = [("precision", "precision", 0), ("batch", "batch", 0), ("threads", "threads", 0),
               ("gather", "gather_threads", 0), ("read", "read_workers", 0),
               ("dtype", "transfer_dtype", 0), ("positions", "positions", 0),
               ("cutouts/s", "cutouts_per_s", 0), ("model-only", "model_only_from_slots", 0),
               ("ratio", "ratio_to_model_only", 3), ("goal", "goal", 2),
               ("device-res.", "model_only_device_resident", 0),
               ("ratio", "ratio_to_device_resident", 3)]
BATCHER_COLUMNS = [("threads", "threads", 0), ("dtype", "dtype", 0), ("batch", "batch", 0),
                   ("cutouts/s", "cutouts_per_s", 0), ("min", "cutouts_per_s_min", 0),
                   ("max", "cutouts_per_s_max", 0), ("GB/s out", "gb_per_s", 2)]


def print_section(name: str, sec: dict) -> None:
    if not sec["results"] and not sec.get("batcher"):
        print(f"\n== {name}: {sec['status']} ({sec['reason']}) ==", flush=True)
        return
    if name == "model_only":
        print_table("model_only: torch runner alone, cutouts/s (median of repeats); "
                    "device_resident = model alone, slots = with the copy to the device",
                    MODEL_COLUMNS, sec["results"])
    elif name == "h2d":
        rows = [{**r, "mb": r["bytes"] / 1e6 if r["bytes"] else None} for r in sec["results"]]
        print_table("h2d: one batch host -> device, GB/s (1e9 B/s), CUDA events on a side "
                    "stream", H2D_COLUMNS, rows)
    elif name == "end_to_end":
        print_table("end_to_end: Engine scanning the grid, cutouts/s; ratio = engine / "
                    f"model-only from slots (goal >= {E2E_GOAL})", E2E_COLUMNS, sec["results"])
    else:
        print_table("gather_threads: Engine(threads=N, gather_threads=N) end to end (read "
                    "pool = min(2, N))", E2E_COLUMNS, sec["results"])
        ref = sec.get("model_only_reference") or {}
        print_table(f"gather_threads: C++ BatchRing alone from one tile in memory, cutouts/s; "
                    f"model-only {ref.get('precision')} batch {ref.get('batch')}: from slots "
                    f"{fmt(ref.get('from_slots'))}, device-resident "
                    f"{fmt(ref.get('device_resident'))}",
                    BATCHER_COLUMNS, sec["batcher"])
    if sec["status"] != "ok":
        print(f"   section {sec['status']}: {sec['reason']}", flush=True)


def anchor_block(model_only: dict | None, cuda: bool) -> dict:
    anchor = dict(ANCHOR)
    best = None
    if model_only:
        ok = [e for e in model_only["results"] if e["status"] == "ok"]
        best = max(ok, key=lambda e: e["cutouts_per_s"], default=None)
    anchor["best_measured"] = None if best is None else {
        k: best[k] for k in ("precision", "cuda_graphs", "batch", "input", "cutouts_per_s")}
    anchor["best_measured_over_scaled_anchor"] = (
        best["cutouts_per_s"] / anchor["scaled_cutouts_per_s"] if best and cuda else None)
    return anchor


def print_anchor(anchor: dict) -> None:
    print("\n== published anchor (NOT a measurement of this machine) ==")
    print(f"   {anchor['what']}: ~{anchor['images_per_s']:,} images/s")
    print(f"   FLOPs ratio 224x224 -> 64x64 (convolutional part): (224/64)^2 = "
          f"{anchor['flops_ratio']:.2f}")
    print(f"   {anchor['label']}: ~{anchor['scaled_cutouts_per_s'] / 1e6:.2f} M cutouts/s "
          f"({anchor['images_per_s']:,} x {anchor['flops_ratio']:.2f} = "
          f"{anchor['scaled_cutouts_per_s']:,.0f}); {anchor['caveat']}")
    best = anchor["best_measured"]
    if best:
        line = (f"   measured here, best model-only (for comparison, not mixed in): "
                f"{best['cutouts_per_s']:,.0f} cutouts/s ({best['precision']}, graphs "
                f"{fmt(best['cuda_graphs'])}, batch {best['batch']}, {best['input']})")
        if anchor["best_measured_over_scaled_anchor"] is not None:
            line += f" = {anchor['best_measured_over_scaled_anchor']:.3f} of the scaled anchor"
        print(line, flush=True)


# -- the summary: the figures the check is for, printed last ------------------------------------
def _best(results: list[dict], **match) -> dict | None:
    ok = [e for e in results if e["status"] == "ok" and e.get("cutouts_per_s") and
          all(e.get(k) == v for k, v in match.items())]
    return max(ok, key=lambda e: e["cutouts_per_s"], default=None)


def summary_block(payload: dict) -> dict:
    """The check's answers, from the sections' entries (None where not measured)."""
    secs, cuda = payload["sections"], payload["device"].startswith("cuda")
    model = secs["model_only"]["results"]
    out = {"model_only": [], "graphs_speedup": [], "pad_speedup": [], "end_to_end": [],
           "h2d": [], "gather_threads_needed": None, "m31_projection": None}
    for precision in dict.fromkeys(e["precision"] for e in model):
        for mode in ("device_resident", "pinned_slots" if cuda else "host_slots"):
            best = _best(model, precision=precision, input=mode, pad_channels=None)
            if best:
                out["model_only"].append({k: best[k] for k in (
                    "precision", "input", "cuda_graphs", "batch", "cutouts_per_s")})
    for e in model:
        if e["status"] != "ok" or e["input"] != "device_resident":
            continue
        key = (e["precision"], e["batch"], e["input"])
        if e["cuda_graphs"] and e["pad_channels"] is None:
            eager = _best(model, precision=key[0], batch=key[1], input=key[2],
                          cuda_graphs=False, pad_channels=None)
            if eager:
                out["graphs_speedup"].append({"precision": key[0], "batch": key[1],
                                              "ratio": e["cutouts_per_s"] /
                                              eager["cutouts_per_s"]})
        if e["pad_channels"]:
            plain = _best(model, precision=key[0], batch=key[1], input=key[2],
                          cuda_graphs=e["cuda_graphs"], pad_channels=None)
            if plain:
                out["pad_speedup"].append({"precision": key[0], "batch": key[1],
                                           "pad_channels": e["pad_channels"],
                                           "ratio": e["cutouts_per_s"] / plain["cutouts_per_s"]})
    for e in secs["end_to_end"]["results"]:
        if e["status"] == "ok":
            out["end_to_end"].append({k: e[k] for k in (
                "precision", "batch", "cutouts_per_s", "ratio_to_model_only", "meets_goal")})
    for e in secs["h2d"]["results"]:
        if e["status"] == "ok" and e["batch"] == payload["args"]["e2e_batch"]:
            out["h2d"].append({k: e[k] for k in ("memory", "dtype", "batch", "gb_per_s")})
    gather = secs["gather_threads"]
    ref = (gather.get("model_only_reference") or {}).get("from_slots")
    rows = [b for b in gather.get("batcher", []) if b["status"] == "ok"]
    if ref and rows:
        dtype = "float16" if any(e.get("transfer_dtype") == "float16"
                                 for e in secs["end_to_end"]["results"]) else "float32"
        enough = sorted(b["threads"] for b in rows if b["dtype"] == dtype and
                        b["cutouts_per_s"] >= ref)
        out["gather_threads_needed"] = {
            "dtype": dtype, "model_only_from_slots": ref,
            "threads": enough[0] if enough else None,
            "note": None if enough else "no thread count measured feeds the model-only rate"}
    best_e2e = max(out["end_to_end"], key=lambda e: e["cutouts_per_s"], default=None)
    if best_e2e:
        stride = payload["args"]["m31_stride"]
        positions = M31_PIXELS / stride**2
        out["m31_projection"] = {
            "what": f"M31 30 kpc region ({M31_PIXELS:.2g} px per band) scanned on a grid of "
                    f"stride {stride} px: {positions:.3g} positions at the best end-to-end rate "
                    "measured here (the field read from page cache, not from disk)",
            "positions": positions, "precision": best_e2e["precision"],
            "cutouts_per_s": best_e2e["cutouts_per_s"],
            "hours": positions / best_e2e["cutouts_per_s"] / 3600}
    return out


def print_summary(summary: dict, payload: dict) -> None:
    """The short table printed last: what the GPU check is for."""
    print("\n== summary (measured on this machine; see the tables above) ==")
    if payload.get("stopped"):
        print(f"   STOPPED: {payload['stopped']}")
    for e in summary["model_only"]:
        print(f"   model-only {e['precision']:<5} {e['input']:<15} best {e['cutouts_per_s']:>12,.0f}"
              f" cutouts/s (batch {e['batch']}, graphs {fmt(e['cuda_graphs'])})")
    for e in summary["graphs_speedup"]:
        print(f"   CUDA graphs speed-up {e['precision']} batch {e['batch']}: x{e['ratio']:.3f}")
    for e in summary["pad_speedup"]:
        print(f"   stem padded to {e['pad_channels']} channels, {e['precision']} batch "
              f"{e['batch']}: x{e['ratio']:.3f} (keep the padding only if > 1)")
    for e in summary["h2d"]:
        print(f"   h2d {e['memory']:<12} {e['dtype']} batch {e['batch']}: "
              f"{e['gb_per_s']:.2f} GB/s")
    for e in summary["end_to_end"]:
        ratio = e["ratio_to_model_only"]
        print(f"   end-to-end {e['precision']} batch {e['batch']}: {e['cutouts_per_s']:,.0f} "
              f"cutouts/s, {fmt(ratio, 3)} of model-only (goal >= {E2E_GOAL})")
    need = summary["gather_threads_needed"]
    if need:
        print(f"   gather threads to feed the model-only rate ({need['dtype']}, "
              f"{need['model_only_from_slots']:,.0f}/s): {fmt(need['threads'])}"
              + (f" ({need['note']})" if need["note"] else ""))
    m31 = summary["m31_projection"]
    if m31:
        print(f"   projection: {m31['what']}: {m31['hours']:.2f} h")
    if not any(summary[k] for k in ("model_only", "end_to_end", "h2d")):
        print("   (nothing measured)")


