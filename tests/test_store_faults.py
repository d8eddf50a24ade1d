"""Fault injection (issue 11): two processes writing one store, kill -9 in the middle of long jobs, resume.

Real processes (``python -m napari_nightwatch.cli`` / ``python -c``), real signals; the store is compared
with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _search_support import copy_store
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.store import PaintingStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "napari_nightwatch.cli", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def test_two_processes_never_lose_a_completion_record(synthetic_store, tmp_path):
    store = copy_store(synthetic_store, tmp_path / "c.nightwatch.zarr")
    code = (
        "import sys\nfrom napari_nightwatch.store import PaintingStore\n"
        f"s = PaintingStore.open({str(store.path)!r}, mode='r+')\n"
        "for i in range(60):\n    s.mark_complete(f'test/{sys.argv[1]}/{i}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, name], env=ENV) for name in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    done = PaintingStore.open(store.path).completed()
    assert {f"test/{n}/{i}" for n in "ab" for i in range(60)} <= set(done)
    assert {"mosaic", "xrf"} <= set(done)  # and nothing of before was lost either


def test_a_second_job_on_the_same_part_is_refused_naming_the_first(synthetic_store, tmp_path):
    store = copy_store(synthetic_store, tmp_path / "j.nightwatch.zarr")
    holder = _python(
        "import time\nfrom napari_nightwatch.store import PaintingStore\n"
        f"s = PaintingStore.open({str(store.path)!r}, mode='r+')\n"
        "with s.job('xrf_maps', 'nightwatch xrf-maps'):\n    print('holding', flush=True)\n    time.sleep(60)\n"
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(NightwatchError, match=rf"xrf_maps of .* is being written by nightwatch xrf-maps "
                                                  rf"\(process {holder.pid} on"):
            with store.job("xrf_maps", "another"):
                pass
        with store.job("grids/L0-t8-s8", "a grid"):  # another part: fine at the same time
            pass
        # kill -9 frees the lock (the operating system drops it with the process)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with store.job("xrf_maps", "after"):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()


def _vectors(path: Path, grid: str, model: str) -> np.ndarray:
    s = PaintingStore.open(path)
    return np.asarray(s.root[f"grids/{grid}/embeddings/{model}/vectors"][...])


def test_embed_killed_mid_run_resumes_to_the_uninterrupted_result(synthetic_store, tmp_path):
    args = ["--model", "nightwatch-tiny", "--pretrained", "none", "--tile", "16", "--chunk-tiles", "32",
            "--batch-size", "16", "--workers", "1", "--device", "cpu", "--json"]
    whole = copy_store(synthetic_store, tmp_path / "whole.nightwatch.zarr")
    killed = copy_store(synthetic_store, tmp_path / "killed.nightwatch.zarr")
    assert _cli("embed", str(whole.path), *args).wait(300) == 0
    grid, model = "L0-t16-s16", "nightwatch-tiny__none"
    done_path = killed.path / "grids" / grid / "embeddings" / model / "done"

    def some_chunks_done() -> bool:
        try:
            arr = PaintingStore.open(killed.path).root[f"grids/{grid}/embeddings/{model}/done"][...]
        except Exception:  # noqa: BLE001 -- not created yet, or being written: keep polling
            return False
        return 2 <= int(np.sum(arr)) < arr.size - 2

    proc = _cli("embed", str(killed.path), *args)
    reached = _wait_for(some_chunks_done, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert reached and done_path.exists(), "the embed finished before it could be killed"
    partial = PaintingStore.open(killed.path)
    assert f"grids/{grid}/embeddings/{model}" not in partial.completed()  # never marked complete half-done
    n_before = int(np.sum(partial.root[f"grids/{grid}/embeddings/{model}/done"][...]))
    resumed = _cli("embed", str(killed.path), *args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    import json

    res = json.loads(out)
    assert res["complete"] and res["chunks_skipped"] >= n_before  # finished chunks were not redone
    # same model, same tiles, same float16 rows: bit-identical to the uninterrupted run
    np.testing.assert_array_equal(_vectors(killed.path, grid, model), _vectors(whole.path, grid, model))


def test_reimport_killed_mid_write_leaves_the_old_mosaic_and_its_search(synthetic_store, tmp_path):
    """replace-then-swap: a re-import killed while writing leaves the previous mosaic, grid and embeddings."""
    import tifffile

    from napari_nightwatch.store.tiles import load_grid, make_grid

    store = copy_store(synthetic_store, tmp_path / "r.nightwatch.zarr")
    make_grid(store, tile=32)
    before = np.asarray(store.mosaic_levels()[0])
    big = np.random.default_rng(0).integers(0, 255, (6144, 6144, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", big, tile=(256, 256))
    proc = _cli("import-mosaic", str(tmp_path / "big.tif"), str(store.path), "--pixel-size-um", "5")
    staging = store.path / "staging"
    reached = _wait_for(lambda: staging.exists() and any(staging.iterdir()), proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert reached, "the import finished before it could be killed"
    after = PaintingStore.open(store.path)
    assert after.is_complete("mosaic") and after.mosaic_shape == before.shape[:2]
    np.testing.assert_array_equal(np.asarray(after.mosaic_levels()[0]), before)
    assert load_grid(after, "L0-t32-s32").n_tiles == 256 and after.stale_parts() == {}


def test_row_shift_is_applied_once_across_a_resume(synthetic_store, tmp_path):
    """Killed after the row-shift correction was written but before the maps were marked complete: the
    resumed run must not shift the maps a second time (they once came out off by thousands of counts)."""
    from napari_nightwatch.synth import load_ground_truth
    from napari_nightwatch.xrf.maps import fit_store, load_element_maps

    store = copy_store(synthetic_store, tmp_path / "rs.nightwatch.zarr")
    fams = list(load_ground_truth(store).families)[:4]
    fit_store(store, elements=fams, refine=False, row_shift=1.0)
    _, once = load_element_maps(store)
    store.mark_incomplete("xrf_maps")  # the state a kill -9 between the correction and the record leaves
    fit_store(store, elements=fams, refine=False, row_shift=1.0)
    _, resumed = load_element_maps(store)
    np.testing.assert_array_equal(resumed, once)
    # another correction asked for: refit from the raw fit, not a shift of shifted maps
    fit_store(store, elements=fams, refine=False, row_shift=-1.0)
    _, other = load_element_maps(store)
    fit_store(store, elements=fams, refine=False, overwrite=True, row_shift=-1.0)
    _, fresh = load_element_maps(store)
    np.testing.assert_array_equal(other, fresh)
    with pytest.raises(NightwatchError, match="row_shift"):
        fit_store(store, elements=fams, refine=False, row_shift=float("nan"))


def _run_killed(code: str, point: str, timeout: float = 300) -> int:
    """Run python ``code`` with the fault injection at ``point``; return its exit status (-9 when killed)."""
    proc = subprocess.run([sys.executable, "-c", code], env={**ENV, "NIGHTWATCH_KILL_AT": point},
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode


def test_xrf_maps_killed_at_a_chunk_resumes_to_the_uninterrupted_maps(synthetic_store, tmp_path):
    from napari_nightwatch.synth import load_ground_truth
    from napari_nightwatch.xrf.maps import fit_store, load_element_maps

    fams = list(load_ground_truth(synthetic_store).families)
    whole = copy_store(synthetic_store, tmp_path / "w.nightwatch.zarr")
    fit_store(whole, elements=fams, refine=False, block=(16, 16), workers=1)
    killed = copy_store(synthetic_store, tmp_path / "k.nightwatch.zarr")
    code = ("from napari_nightwatch.store import PaintingStore\nfrom napari_nightwatch.xrf.maps import fit_store\n"
            f"fit_store(PaintingStore.open({str(killed.path)!r}, mode='r+'), elements={fams!r}, refine=False, "
            "block=(16, 16), workers=1, progress=lambda *a: None)\n")
    assert _run_killed(code, "fit element maps:7") == -signal.SIGKILL
    part = PaintingStore.open(killed.path)
    assert not part.is_complete("xrf_maps")
    n_done = int(np.sum(part.root["xrf_maps/done"][...]))
    assert 7 <= n_done < 16  # finished chunks kept, not all of them
    fit_store(PaintingStore.open(killed.path, mode="r+"), elements=fams, refine=False, block=(16, 16), workers=1)
    np.testing.assert_array_equal(load_element_maps(killed)[1], load_element_maps(whole)[1])


def test_index_killed_mid_build_leaves_no_index_then_builds_the_same(synthetic_store, tmp_path, capsys):
    from _search_support import ColourTextureEncoder, write_embeddings
    from napari_nightwatch.cli import main
    from napari_nightwatch.search import build_index, load_index

    store = copy_store(synthetic_store, tmp_path / "x.nightwatch.zarr")
    enc = ColourTextureEncoder()
    write_embeddings(store, enc, tile=16)
    code = ("from napari_nightwatch.search import build_index\n"
            f"build_index({str(store.path)!r}, 'L0-t16-s16', {enc.model_id!r}, kind='flat', "
            "progress=lambda *a: None)\n")
    assert _run_killed(code, "index: add:1") == -signal.SIGKILL
    after = PaintingStore.open(store.path, mode="r+")
    assert "grids/L0-t16-s16/index/" + enc.model_id not in after.completed()
    assert main(["search", str(store.path), "--region", "0,0,16,16", "--json"]) == 2  # no index served
    assert "no finished index" in capsys.readouterr().err
    build_index(after, "L0-t16-s16", enc.model_id, kind="flat")
    vi = load_index(after, "L0-t16-s16", enc.model_id)
    from napari_nightwatch.store.embeddings import open_embeddings

    rows = open_embeddings(after, "L0-t16-s16", enc.model_id).read(np.array([0, 100]))
    scores, _ = vi.search(rows, 1)
    # each stored row finds an identical row first (itself or an identical tile): float16 rows, cosine 1
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-3)
    assert vi.n_vectors == 1024


def test_train_and_predict_killed_leave_no_half_part(tmp_path):
    from _bridge_support import bridge_ready_store
    from napari_nightwatch.ml.bridge import predict_xrf_maps, train_xrf_bridge

    store, _, _ = bridge_ready_store(tmp_path / "b.nightwatch.zarr", size=256)
    code = ("from napari_nightwatch.store import PaintingStore\n"
            "from napari_nightwatch.ml.bridge import train_xrf_bridge, predict_xrf_maps\n"
            f"s = PaintingStore.open({str(store.path)!r}, mode='r+')\n"
            "r = train_xrf_bridge(s, epochs=5, threads=1, progress=lambda *a: None)\n"
            "predict_xrf_maps(s, encoder_id=r['encoder_id'], progress=lambda *a: None)\n")
    assert _run_killed(code, "train-xrf: baselines and choice per element:0") == -signal.SIGKILL
    s = PaintingStore.open(store.path, mode="r+")
    assert not any(p.startswith("models/") for p in s.completed())
    assert _run_killed(code, "predict-xrf:2") == -signal.SIGKILL
    s = PaintingStore.open(store.path, mode="r+")
    assert any(p.startswith("models/") for p in s.completed())
    assert not any(p.startswith("predicted/") for p in s.completed())
    # the next run finishes, and no job lock is left behind by the killed processes
    out = train_xrf_bridge(s, epochs=5, threads=1)
    pred = predict_xrf_maps(s, encoder_id=out["encoder_id"])
    assert f"predicted/{pred['name']}" in s.completed() and s.stale_parts() == {}


def test_failed_reimports_leave_the_previous_parts_intact(synthetic_store, tmp_path):
    """A truncated TIFF or a corrupt HDF5 offered as the new mosaic / cube: one sentence, and the old
    mosaic, cube and everything made from them stay complete, fresh and readable."""
    import tifffile

    from napari_nightwatch.store.sources import import_mosaic, import_xrf
    from napari_nightwatch.store.tiles import make_grid

    store = copy_store(synthetic_store, tmp_path / "f.nightwatch.zarr")
    make_grid(store, tile=32)
    mosaic = np.asarray(store.mosaic_levels()[0])
    cube_sum = store.xrf_sum_spectrum().copy()
    before = store.completed()
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((512, 512, 3), np.uint8))
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(NightwatchError, match="cut.tif"):
        import_mosaic(tmp_path / "cut.tif", store, pixel_size_um=5.0)
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(NightwatchError, match="bad.h5"):
        import_xrf(tmp_path / "bad.h5", store)
    after = PaintingStore.open(store.path)
    assert after.completed() == before and after.stale_parts() == {}
    np.testing.assert_array_equal(np.asarray(after.mosaic_levels()[0]), mosaic)
    np.testing.assert_array_equal(after.xrf_sum_spectrum(), cube_sum)
    staging = store.path / "staging"  # the empty staging group may stay; no staged part may
    assert not staging.exists() or not any(p.is_dir() for p in staging.iterdir())
