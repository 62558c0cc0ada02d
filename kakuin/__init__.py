"""Kakuin's composition root: the ``kakuin`` CLI and ``kakuin up``."""
