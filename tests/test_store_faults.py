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
