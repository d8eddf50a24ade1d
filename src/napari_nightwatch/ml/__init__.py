"""Learned models: the CLIP engine (:mod:`.clip`) and the tile-embedding pipeline (:mod:`.embed`).

This is the only layer that imports torch and open_clip, and it does so inside
functions, so ``import napari_nightwatch.ml`` (and ``.clip``, ``.embed``) stays cheap.
"""
