"""Vector index and queries: find the tiles of one or many paintings that match a question.

:mod:`.index` builds, stores, extends and loads the FAISS index of a grid's tile
embeddings (the only module of the package that imports faiss, inside functions);
:mod:`.query` turns text, exemplar regions, exemplar images and their combinations
into query vectors and runs them as a ranked hit list or a per-tile similarity map.
Models are passed in, never built here.
"""

from __future__ import annotations

from .index import (
    IndexSpec,
    VectorIndex,
    add_to_index,
    build_index,
    choose_index,
    default_cache_dir,
    index_from_vectors,
    load_index,
)
from .query import (
    PAINTING_TEMPLATES,
    Hit,
    combine,
    hits_to_json,
    image_vector,
    merge_overlapping,
    region_vector,
    search,
    similarity_map,
    text_vector,
)

__all__ = [
    "PAINTING_TEMPLATES",
    "Hit",
    "IndexSpec",
    "VectorIndex",
    "add_to_index",
    "build_index",
    "choose_index",
    "combine",
    "default_cache_dir",
    "hits_to_json",
    "image_vector",
    "index_from_vectors",
    "load_index",
    "merge_overlapping",
    "region_vector",
    "search",
    "similarity_map",
    "text_vector",
]
