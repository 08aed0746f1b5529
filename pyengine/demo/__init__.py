"""``pyengine demo``: the whole job on a small synthetic field, checked against its truth.

Makes a PAndAS-like g, i field (:mod:`pyengine.synth`), scans it in detection
mode with the shipped demo model, writes the catalog, DS9 regions and a PNG
overview with the candidates marked, and prints completeness and purity of
the candidates against the field's truth table (a candidate is a true cluster
when a truth cluster lies within ``match_radius`` pixels).

:mod:`~pyengine.demo.run` does the work, :mod:`~pyengine.demo.cli` is the command.

Thread safety: one demo per process (it installs no signal handlers; the scan
runs the engine's own threads).
"""

