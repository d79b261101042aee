"""Datasets: sources registered by name (:mod:`.base`, :mod:`.sources`) and their prepared splits (:mod:`.preparation`)."""

from nas_core.data import sources  # noqa: F401  (registers the built-in sources before any lookup)
