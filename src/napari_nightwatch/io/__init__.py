"""Reading sources (OME-Zarr, TIFF, PNG/JPEG, DZI, XRF files) and writing NGFF."""
