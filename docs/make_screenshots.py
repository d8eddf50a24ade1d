"""Screenshots for docs/user-guide.md, made by driving the real plugin panels.

Run with ``make docs-screenshots`` (under Xvfb when there is no display). Builds the
demo painting (synthetic, 1024 px, seed 0; cached in the user cache), then walks
through the workflow as a user would: open the store, fit element maps, embed the
tiles, search, register, train, predict. Each step saves ``docs/images/NN-*.png``
with ``viewer.screenshot`` and prints the largest GUI event-loop gap measured while
each long job ran (the responsiveness figures of issue 6).

Options: ``--model``/``--pretrained`` (default ViT-B-32 at random weights, since
the pretrained weights cannot be fetched offline), ``--size``, ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
UM = ("micrometer", "micrometer")


def wait(panel, timeout_s: float = 1800.0) -> None:
    """Process Qt events until the panel's job has finished; stop on a failure."""
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while panel.runner.running:
        QApplication.processEvents()
        time.sleep(0.005)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"{panel.runner._label} did not finish in {timeout_s} s")
    if panel.runner.last_message:
        raise SystemExit(f"step failed: {panel.runner.last_message}")


def settle(n: int = 30) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "images")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--cold", action="store_true", help="do not import torch/open_clip/faiss before the first job")
    args = ap.parse_args(argv)

    import napari

    from napari_nightwatch._napari._compat import avoid_llvm_clash
    from napari_nightwatch._napari._qt.common import show_scale_bar
    from napari_nightwatch._napari.sample_data import synthetic_store_path
    from napari_nightwatch.core.geometry import apply_affine
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.synth import load_ground_truth

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nightwatch-docs-"))
    os.environ["NAPARI_NIGHTWATCH_CONFIG_DIR"] = str(work / "config")  # leave the user's panel settings alone
    store_path = work / "demo.nightwatch.zarr"
    shutil.copytree(synthetic_store_path(args.size), store_path)
    gt = load_ground_truth(PaintingStore.open(store_path))
    figures: dict[str, dict] = {}

    viewer = napari.Viewer(title="napari-nightwatch")
    viewer.window.resize(1600, 1000)
    avoid_llvm_clash()
    if not args.cold:
        # what a napari session holds after its first job: importing torch (a dlopen of
        # hundreds of MB with the GIL held) would otherwise dominate the first job's gap
        import faiss  # noqa: F401
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    from napari_nightwatch._napari._qt.jobs import EventLoopProbe

    probe = EventLoopProbe()
    probe.start()
    settle(200)
    figures["idle"] = {"max_gap_ms": round(probe.stop(), 1)}
    print(f"idle GUI: largest event-loop gap {figures['idle']['max_gap_ms']} ms over 2 s", flush=True)

    def shot(name: str) -> None:
        settle()
        viewer.screenshot(str(args.out / name), canvas_only=False)
        print(f"wrote {args.out / name}", flush=True)

    def record(step: str, panel) -> None:
        r = panel.runner
        figures[step] = {"job_s": round(r.elapsed_s, 2), "max_gap_ms": round(r.job_max_gap_ms, 1),
                         "add_layers_ms": round(r.show_s * 1000)}
        print(f"{step}: job {r.elapsed_s:.1f} s, largest event-loop gap while it ran {r.job_max_gap_ms:.1f} ms, "
              f"adding its layers {r.show_s * 1000:.0f} ms", flush=True)

    def dock(name: str):
        _, w = viewer.window.add_plugin_dock_widget("napari-nightwatch", name, tabify=True)
        return w

    # 1. the project: open the store, see what is in it and what comes next
    project = dock("Painting project")
    project.store_edit.setText(str(store_path))
    project.open_button.click()
    wait(project)
    show_scale_bar(viewer)
    shot("01-project.png")

    # 2. XRF: element maps, spectrum of one pixel with the element lines
    xrf = dock("XRF")
    xrf.elements_edit.setText("auto")
    xrf.fit_button.click()
    wait(xrf)
    record("element maps", xrf)
    for layer in viewer.layers:
        kind = layer.metadata.get("nightwatch_kind")
        if kind == "element_map":
            layer.visible = layer.metadata.get("element") in ("Hg-L", "Cu-K", "Co-K", "Fe-K")
        elif kind in ("mosaic", "xrf_total"):
            layer.visible = False  # the false-colour composite of the maps alone
    xrf_layer = next(ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "xrf_total")
    corners = [xrf_layer.data_to_world(p) for p in [(35.5, 60.5), (35.5, 75.5), (45.5, 75.5), (45.5, 60.5)]]
    viewer.add_shapes([corners], shape_type="rectangle", name="XRF region", edge_color="white",
                      face_color="transparent", edge_width=10, units=UM)
    xrf.shapes_combo.setCurrentText("XRF region")
    xrf.region_button.click()
    shot("02-xrf.png")
    viewer.layers.remove("XRF region")
    for layer in viewer.layers:
        if layer.metadata.get("nightwatch_kind") == "mosaic":
            layer.visible = True

    # 3. Embed the tiles (cancel and resume work the same way)
    embed = dock("Embed tiles")
    embed.model_combo.setCurrentText(args.model)
    embed.pretrained_edit.setText(args.pretrained)
    embed.tile_spin.setValue(args.tile)
    embed.stride_spin.setValue(0)
    embed.batch_spin.setValue(32)
    embed.run_button.click()
    wait(embed)
    record("embed", embed)
    shot("03-embed.png")

    # 4. Search by words, then step to the third hit from the table
    search = dock("Search")
    search.refresh_embeddings()
    search.source_combo.setCurrentText("text")
    search.text_edit.setText("blue pigment particles")
    search.k_spin.setValue(10)
    search.search_button.click()
    wait(search)
    record("search", search)
    for layer in viewer.layers:
        if layer.metadata.get("nightwatch_kind") == "element_map":
            layer.visible = False
    viewer.reset_view()
    shot("04-search.png")
    search.table.setCurrentCell(2, 0)
    shot("05-hit.png")
    viewer.reset_view()

    # 5. Bridge: register from control points, train with a live loss curve, predict
    bridge = dock("Bridge")
    xrf_px = np.array([[5.0, 6.0], [120.0, 8.0], [118.0, 121.0], [9.0, 117.0], [64.0, 64.0]])
    xrf_px = xrf_px * (np.array(PaintingStore.open(store_path).xrf_shape) / 128.0)
    viewer.add_points([xrf_layer.data_to_world(p) for p in xrf_px], name="XRF control points", face_color="cyan",
                      size=40, units=UM)
    viewer.add_points(apply_affine(gt.true_affine, xrf_px) * PaintingStore.open(store_path).mosaic_pixel_size_um,
                      name="mosaic control points", face_color="yellow", size=40, units=UM)
    bridge.xrf_points_combo.setCurrentText("XRF control points")
    bridge.mosaic_points_combo.setCurrentText("mosaic control points")
    bridge.register_button.click()
    wait(bridge)
    bridge.refresh_embeddings()
    bridge.epochs_spin.setValue(args.epochs)
    bridge.train_button.click()
    wait(bridge)
    record("train", bridge)
    shot("06-train.png")
    bridge.predict_button.click()
    wait(bridge)
    record("predict", bridge)
    for layer in viewer.layers:
        kind = layer.metadata.get("nightwatch_kind")
        if kind in ("similarity", "hits", "hit_boxes"):
            layer.visible = False
        if kind in ("element_map", "predicted_map"):
            layer.visible = layer.metadata.get("element") == "Hg-L"
        if kind in ("mosaic", "xrf_total") or layer.name.endswith("control points"):
            layer.visible = False  # measured Hg-L (left) and predicted Hg-L (right) alone
    pred = next(ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "predicted_map"
                and ly.metadata.get("element") == "Hg-L")
    pred.translate = (pred.translate[0], pred.translate[1] + args.size * 5.0 * 1.05)  # side by side
    viewer.reset_view()
    shot("07-predict.png")
    pred.translate = (pred.translate[0], pred.translate[1] - args.size * 5.0 * 1.05)

    (args.out / "responsiveness.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    viewer.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
