"""The classifier: ResNet-50 with in-graph preprocessing, and its self-describing file.

``spec`` needs no torch; ``resnet``, ``preprocess``, ``classifier`` and the loading
half of ``checkpoint`` import torch.  Nothing is imported by this package itself.
"""
