"""The painting store: one zarr store per painting holding or referencing its sources
and everything derived from them (see :mod:`.layout` for every path).

Modules: ``painting`` (the store, locks, replace-then-swap), ``layout`` (paths),
``sources`` (mosaic and MA-XRF written into or referenced by the store), ``tiles``
(tile grids and masks), ``embeddings`` (the embeddings handle), ``models`` (saved
spectrum encoders), ``predictions`` (predicted element maps).
"""

from .layout import STORE_SUFFIX
from .painting import SCHEMA_VERSION, PaintingStore, file_signature, provenance

__all__ = ["SCHEMA_VERSION", "STORE_SUFFIX", "PaintingStore", "file_signature", "provenance"]
