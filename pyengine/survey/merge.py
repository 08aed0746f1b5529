"""``pyengine merge``: join the outputs of ``pyengine scan SURVEY --shard I/N`` jobs (a
Slurm array, say) into the catalog one process would have written, row for row.

A shard's output is a catalog of its fields' rows that keeps the columns that order them
(:data:`pyengine.survey.scan.FIELD_ORDER`, :data:`~pyengine.survey.scan.FIELD_ROW`, and
in catalog mode the input row), with ``SHARD = 'I/N'``, ``SURVEYID`` (a hash of the
fields, their band files by content, the source's options and the area) and ``SRCKIND``
in its header. Merging checks that every part is a shard of one survey scan and that the
shards 0..N-1 are there exactly once. It stacks them, then orders, reconciles detections
and per-field catalog rows, and numbers the rows as a single-process scan does
(:func:`pyengine.survey.scan.finish`). In grid mode the shards' score maps of each field
(a field cut between shards has part of its map in each) are combined beside ``OUT``.
Anything else is one line naming the file.

Thread safety: reads its inputs, writes its output atomically.
"""

from __future__ import annotations

from pathlib import Path

from pyengine.errors import ConfigError

__all__ = ["merge_shards"]


def _shard_meta(path: Path, table) -> tuple[int, int, str, str, str]:
    meta = {str(k).upper(): v for k, v in table.meta.items()}
    shard, ident, kind = meta.get("SHARD"), meta.get("SURVEYID"), meta.get("SRCKIND")
    if not shard or not ident or not kind:
        raise ConfigError(f"{path}: not the output of pyengine scan SURVEY --shard I/N (no "
                          "SHARD/SURVEYID/SRCKIND keys); merge takes shard outputs only")
    i, n = (int(v) for v in str(shard).split("/"))
    return i, n, str(ident), str(kind), str(meta.get("SURVEY", ""))


def merge_shards(parts, out, *, overwrite: bool = False) -> dict:
    """Merge shard outputs ``parts`` into ``out``; a summary dict (rows, shards, fields)."""
    from astropy.table import Table, vstack

    from pyengine.output.catalog import write_catalog
    from pyengine.output.fits_table import writer_keyword
    from pyengine.survey.geometry import SurveyGeometry
    from pyengine.survey.manifest import read_manifest
    from pyengine.survey.scan import combine_scoremaps, finish
    from pyengine.survey.sources import MEASURED

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: the file exists; add --overwrite to replace it")
    paths = [Path(p) for p in parts]
    if not paths:
        raise ConfigError("merge: no shard outputs given")
    tables, seen, first = [], {}, None
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such shard output")
        if path.resolve() == out.resolve():
            raise ConfigError(f"--out {out} is one of the shard outputs; choose another path")
        table = Table.read(path, mask_invalid=False)
        i, n, ident, kind, manifest = _shard_meta(path, table)
        if first is None:
            first = (n, ident, kind, manifest, path)
        elif (n, ident) != first[:2]:
            raise ConfigError(f"{path}: a shard of another survey scan (SURVEYID {ident}, N={n})"
                              f" than {first[4]} (SURVEYID {first[1]}, N={first[0]}); merge the "
                              "shards of one scan")
        if i in seen:
            raise ConfigError(f"{path}: shard {i}/{n} again (also {seen[i]}); give each once")
        seen[i] = path
        tables.append(table)
    n = first[0]
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise ConfigError(f"merge: shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing "
                          f"(have {len(seen)} of {n}); every shard's output is needed")
    meta = {k: v for k, v in tables[0].meta.items() if not writer_keyword(k)
            and str(k).upper() not in ("SHARD", "SURVEYID", "SRCKIND")}
    # shards that held no field add no rows (and have no columns to match)
    filled = [t for t in tables if len(t)] or tables[:1]
    table = vstack(filled, metadata_conflicts="silent")
    kind = first[2]
    geo = None
    if kind in MEASURED:  # reconciliation needs the fields' geometry
        if not first[3] or not Path(first[3]).exists():
            raise ConfigError(f"{first[4]}: its survey manifest {first[3] or '(none)'} is not "
                              "there; measured positions are reconciled on the fields' footprints")
        geo = SurveyGeometry(read_manifest(first[3]))
    table, merged = finish(table, kind, geo)
    table.meta.clear()
    table.meta.update(meta)
    maps = _scoremap_sets([seen[i] for i in range(n)], out)
    for _, target in maps.values():
        if target.exists() and not overwrite:
            raise ConfigError(f"{target}: the score map exists; add --overwrite to replace it")
    write_catalog(table, out)
    scoremaps = {name: str(combine_scoremaps(paths, target))
                 for name, (paths, target) in maps.items()}
    return {"rows": len(table), "shards": n, "merged_duplicates": merged, "out": str(out),
            "scoremaps": scoremaps}


def _scoremap_sets(shards, out: Path) -> dict[str, tuple[list[Path], Path]]:
    """Grid mode: field name -> (the shards' score maps of the field, ``<shard stem>_
    <field>_scoremap.fits``: a field cut between shards has one in each; the combined
    map's path, ``<out stem>_<field>_scoremap.fits``)."""
    by_field: dict[str, list[Path]] = {}
    for shard in shards:
        shard = Path(shard)
        prefix = f"{shard.stem}_"
        for path in sorted(shard.parent.glob(f"{shard.stem}_*_scoremap.fits")):
            name = path.name[len(prefix): -len("_scoremap.fits")]
            by_field.setdefault(name, []).append(path)
    return {name: (paths, out.with_name(f"{out.stem}_{name}_scoremap.fits"))
            for name, paths in by_field.items()}
