"""The classifier: ResNet-50 with in-graph preprocessing, and its self-describing file.

``spec`` (metadata, no torch) loads eagerly; the torch modules load on use.
"""
