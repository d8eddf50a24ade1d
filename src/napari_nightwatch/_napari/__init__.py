"""napari integration: layer conversion, reader, sample data, writers and widgets.

Only this subpackage imports napari, magicgui or qtpy, and every Qt class lives in
:mod:`napari_nightwatch._napari._qt`. The modules at this level (``layers``,
``reader``, ``sample_data``, ``writers``, ``settings``, ``demo_viewer``) are plain
functions that tests call without a Qt event loop; ``_compat`` keeps triton out of a
process whose OpenGL is Mesa's llvmpipe (loading both LLVMs crashes).
"""
