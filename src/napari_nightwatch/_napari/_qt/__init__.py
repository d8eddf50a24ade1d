"""Qt widgets of the napari plugin (every Qt class of the package lives here)."""
