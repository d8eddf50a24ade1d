"""Pure numpy/dask building blocks: errors, progress, energy calibration,
tile grids and geometry. Nothing here imports zarr, torch, faiss or Qt."""
