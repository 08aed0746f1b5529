"""Synthetic PAndAS-like fields (placeholder: being written)."""
