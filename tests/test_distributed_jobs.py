"""Every long job on a dask cluster (issue 15, item 3): xrf-maps, tile pairing (train-xrf)
and predict-xrf on a ``LocalCluster`` of two worker processes give the same bytes as the
in-process run, keep their completion records and resume after a cancel; a scheduler
that cannot be reached is one sentence, at once.

Each job runs in-process on one copy of a small synthetic painting and on the cluster on
another copy. Equality is exact (``np.array_equal``): both paths run the same per-chunk
function on the same chunks and add partial sums in the same order. The in-process runs
use one BLAS/torch thread, as dask's workers do (its nanny starts them with
OMP_NUM_THREADS=1): a matrix product may sum in another order with more threads.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time

import distributed
import numpy as np
import pytest

from _bridge_support import bridge_ready_store
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import Cancelled, NightwatchError
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.xrf import pairing
from napari_nightwatch.xrf.maps import fit_store

#: cube rows per pairing block in these tests (see _rechunk_cube): 8 blocks over the 32-row scan
PAIR_ROWS = 4


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as c:
        yield c


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as on the workers (numpy's BLAS already is: the test runs with OMP_NUM_THREADS=1
    or conftest's 2, and OpenBLAS splits a product's rows, not its sums, between threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _copy(src, dst) -> PaintingStore:
    shutil.copytree(src, dst)
    return PaintingStore.open(dst, mode="r+")


def _record(store: PaintingStore, part: str) -> dict:
    """A completion record without what differs between any two runs (its date and fresh id)."""
    rec = dict(store.completed()[part])
    rec.pop("created")
    rec.pop("id")
    return rec


def _json(result: dict) -> str:
    """A result as text: floats written exactly (repr), NaN equal to NaN."""
    return json.dumps(result, sort_keys=True, default=str)


def _arrays(group) -> dict[str, np.ndarray]:
    return {name: np.asarray(arr[...]) for name, arr in group.arrays()}


def _assert_same_arrays(a, b) -> None:
    a, b = _arrays(a), _arrays(b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name


def _rechunk_cube(store: PaintingStore, rows: int) -> None:
    """Store the cube in ``rows``-row chunks, as a large scan's cube is many chunk rows (same values)."""
    g = store.root["xrf"]
    old = g["cube"]
    data, attrs = np.asarray(old[...]), dict(old.attrs)
    del g["cube"]
    new = g.create_array("cube", shape=data.shape, dtype=data.dtype, chunks=(rows,) + data.shape[1:],
                         dimension_names=("y", "x", "energy"), fill_value=0)
    new[...] = data
    new.attrs.update(attrs)


@pytest.fixture(scope="module")
def painting(tmp_path_factory):
    """A synthetic painting ready for the bridge (maps fitted, registered, embedded), its cube in 4-row chunks,
    and a copy of it with a spectrum encoder trained in-process (the reference of train-xrf and the input of
    predict-xrf)."""
    tmp = tmp_path_factory.mktemp("dist")
    store, gt, engine = bridge_ready_store(tmp / "base.nightwatch.zarr", size=256, seed=1)
    _rechunk_cube(store, PAIR_ROWS)
    trained = _copy(store.path, tmp / "trained.nightwatch.zarr")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setattr(pairing, "BLOCK_BYTES", _block_bytes(trained))
        result = _train(trained)
    return store.path, gt, trained.path, result


def _block_bytes(store: PaintingStore) -> int:
    """A pairing block budget of PAIR_ROWS cube rows (the default, 256 MB, holds this whole cube)."""
    ny, nx, ne = store.root["xrf/cube"].shape
    return PAIR_ROWS * nx * ne * 8


def _train(store: PaintingStore, client=None) -> dict:
    from napari_nightwatch.ml import bridge as B

    return B.train_xrf_bridge(store, epochs=3, threads=1, client=client)


# ----------------------------------------------------------------------------------- xrf-maps
def _fit(store, client=None, **kw):
    from napari_nightwatch.synth import load_ground_truth

    families = list(load_ground_truth(store).families)
    with one_thread():
        return fit_store(store, families, refine=False, overwrite=True, block=(8, 8), client=client, **kw)


def test_xrf_maps_on_the_cluster_equal_in_process_and_resume_after_cancel(painting, client, tmp_path):
    base, *_ = painting
    ref = _copy(base, tmp_path / "ref.nightwatch.zarr")
    ref_summary = _fit(ref)
    assert ref_summary["cluster_workers"] == 0 and ref_summary["chunks_fitted"] == 16

    dist = _copy(base, tmp_path / "dist.nightwatch.zarr")
    summary = _fit(dist, client=client)
    assert summary["cluster_workers"] == 2 and summary["chunks_fitted"] == 16 and summary["chunks_resumed"] == 0
    assert summary["elements"] == ref_summary["elements"]
    _assert_same_arrays(ref.root["xrf_maps"], dist.root["xrf_maps"])
    assert _record(dist, "xrf_maps") == _record(ref, "xrf_maps")
    for key in ("signature", "model", "elements", "colormaps"):
        assert dist.root["xrf_maps"].attrs["nightwatch"][key] == ref.root["xrf_maps"].attrs["nightwatch"][key]
    # a task left over from an older run writes nothing (here run in this process, with a stand-in fit)
    from napari_nightwatch.xrf import maps

    before = np.asarray(dist.root["xrf_maps/0"][...])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(maps, "fit_block", lambda block, model, **kw: np.zeros(block.shape[:-1] + (2 * len(before) + 1,),
                                                                      np.float32))
        assert maps._fit_chunks_task(str(dist.path), None, [0, 5], (8, 8), 4, "an-older-run") == {"costs": {}}
    assert np.array_equal(np.asarray(dist.root["xrf_maps/0"][...]), before)
    # a worker that cannot see the store says so in one sentence, raised here
    fut = client.submit(maps._fit_chunks_task, str(tmp_path / "elsewhere.nightwatch.zarr"), None, [0], (8, 8), 4,
                        "r", pure=False)
    with pytest.raises(NightwatchError, match=r"A dask worker on .* could not open the painting store .*elsewhere"):
        fut.result()

    # cancelled on the cluster after 4 of 16 chunks: finished chunks are kept, a rerun fits only the rest
    killed = _copy(base, tmp_path / "killed.nightwatch.zarr")

    def stop_after_4(done: int, total: int, stage: str) -> None:
        if done >= 4:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        _fit(killed, client=client, progress=stop_after_4)
    killed = PaintingStore.open(killed.path, mode="r+")
    kept = int(np.asarray(killed.root["xrf_maps/done"][...]).sum())
    assert 4 <= kept < 16 and not killed.is_complete("xrf_maps")
    from napari_nightwatch.synth import load_ground_truth

    with one_thread():  # a resume, not a refit: no overwrite
        again = fit_store(killed, list(load_ground_truth(killed).families), refine=False, block=(8, 8),
                          client=client.scheduler.address)
    assert again["chunks_resumed"] == kept and again["chunks_fitted"] == 16 - kept
    _assert_same_arrays(ref.root["xrf_maps"], killed.root["xrf_maps"])
    assert _record(killed, "xrf_maps") == _record(ref, "xrf_maps")


def test_cli_xrf_maps_with_scheduler_and_a_bad_address(painting, client, tmp_path, capsys):
    base, *_ = painting
    args = ["--elements", "Hg-L,Pb-L,Fe-K,Cu-K", "--no-refine", "--json"]
    ref = _copy(base, tmp_path / "ref.nightwatch.zarr")
    with one_thread():
        assert main(["xrf-maps", str(ref.path), "--overwrite", *args]) == 0
    capsys.readouterr()
    dist = _copy(base, tmp_path / "dist.nightwatch.zarr")
    with one_thread():
        assert main(["xrf-maps", str(dist.path), "--overwrite", "--scheduler", client.scheduler.address, *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cluster_workers"] == 2 and out["elements"] == ["Hg-L", "Pb-L", "Fe-K", "Cu-K"]
    ref, dist = PaintingStore.open(ref.path), PaintingStore.open(dist.path)
    _assert_same_arrays(ref.root["xrf_maps"], dist.root["xrf_maps"])
    assert _record(dist, "xrf_maps") == _record(ref, "xrf_maps")

    # nothing listens on port 1: one sentence naming the address, exit 2, at once, nothing written
    bad = _copy(base, tmp_path / "bad.nightwatch.zarr")
    before = bad.completed()["xrf_maps"]
    t0 = time.perf_counter()
    assert main(["xrf-maps", str(bad.path), "--overwrite", "--scheduler", "tcp://127.0.0.1:1", *args]) == 2
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert took < 10, took
    assert len(err.splitlines()) == 1 and "--scheduler tcp://127.0.0.1:1 could not be reached" in err, err
    assert PaintingStore.open(bad.path).completed()["xrf_maps"] == before
    with pytest.raises(NightwatchError, match="not a scheduler address"):
        fit_store(bad, "Pb-L", client="tcp://127.0.0.1:port")


# -------------------------------------------------------------------------------- tile pairing
def test_pairing_on_the_cluster_equals_in_process(painting, client, monkeypatch):
    base, *_ = painting
    store = PaintingStore.open(base)
    monkeypatch.setattr(pairing, "BLOCK_BYTES", _block_bytes(store))
    seen: list[tuple[int, int]] = []
    local = pairing.pair_tiles(store, progress=lambda d, t, s: seen.append((d, t)))
    spread = pairing.pair_tiles(store, client=client.scheduler.address)
    assert seen[-1] == (8, 8)  # eight blocks of four cube rows
    assert local.spectra.dtype == np.float32 and local.spectra.shape[0] == len(local) > 100
    assert np.array_equal(local.tiles, spread.tiles) and np.array_equal(local.spectra, spread.spectra)
    assert np.array_equal(local.elements, spread.elements)
    # against the dense definition (float32 result of float64 sums: 1e-6 relative)
    w, tiles, _ = pairing.footprint_matrix(local.grid, store.xrf_affine, store.xrf_shape)
    dense = w.toarray() @ np.asarray(store.root["xrf/cube"][...], np.float64).reshape(w.shape[1], -1)
    np.testing.assert_allclose(spread.spectra, dense, rtol=1e-6, atol=1e-6)
    with pytest.raises(NightwatchError, match="needs the painting store"):
        pairing.pair_cube(w, np.zeros((32, 32, 4)), client=client)


def test_cli_train_xrf_pairs_on_the_cluster_and_trains_the_same_encoder(painting, client, tmp_path, monkeypatch,
                                                                           capsys):
    base, _, trained_path, reference = painting
    store = _copy(base, tmp_path / "dist.nightwatch.zarr")
    monkeypatch.setattr(pairing, "BLOCK_BYTES", _block_bytes(store))
    buf = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(buf):
        assert main(["train-xrf", str(store.path), "--epochs", "3", "--threads", "1", "--json",
                     "--scheduler", client.scheduler.address]) == 0
    out = json.loads(buf.getvalue().strip().splitlines()[-1])
    # the same paired spectra give the same weights, bit for bit: the encoder id carries their hash
    assert out["encoder_id"] == reference["encoder_id"]
    part = f"models/{out['encoder_id']}"
    ref = PaintingStore.open(trained_path)
    _assert_same_arrays(ref.root[part], PaintingStore.open(store.path).root[part])


# --------------------------------------------------------------------------------- predict-xrf
def test_predict_xrf_on_the_cluster_equals_in_process_and_resumes(painting, client, tmp_path, monkeypatch, capsys):
    from napari_nightwatch.ml import bridge as B
    from napari_nightwatch.ml.bridge import predict as P

    _, _, trained_path, trained = painting
    # 64 tiles a chunk: the grid's 256 tiles are four chunks of per-tile estimates
    monkeypatch.setattr(P, "PREDICT_CHUNK_TILES", 64)
    ref = _copy(trained_path, tmp_path / "ref.nightwatch.zarr")
    with one_thread():
        local = B.predict_xrf_maps(ref)
    name = local["name"]
    assert not ref.has(P._work_path(name))  # the work area is gone once the maps are written

    dist = _copy(trained_path, tmp_path / "dist.nightwatch.zarr")
    with one_thread():
        spread = B.predict_xrf_maps(dist, client=client)
    assert _json(spread) == _json(local)  # every validation figure
    _assert_same_arrays(ref.root[f"predicted/{name}"], dist.root[f"predicted/{name}"])
    assert _record(dist, f"predicted/{name}") == _record(ref, f"predicted/{name}")

    # cancelled after 2 of 4 chunks on the cluster; a rerun makes only the other chunks
    killed = _copy(trained_path, tmp_path / "killed.nightwatch.zarr")
    stage = "predict-xrf: per-tile estimates"

    def stop(done: int, total: int, what: str) -> None:
        if what == stage and done >= 2:
            raise Cancelled("stop")

    with one_thread(), pytest.raises(Cancelled):
        B.predict_xrf_maps(killed, client=client, progress=stop)
    work = P._work_path(name)
    kept = np.asarray(killed.root[f"{work}/done"][...])
    assert kept.size == 4 and 2 <= kept.sum() < 4 and not killed.is_complete(f"predicted/{name}")
    assert np.isfinite(np.asarray(killed.root[f"{work}/estimates"][...])[np.repeat(kept, 64)]).all()
    seen: list[tuple[int, int]] = []
    with one_thread():
        again = B.predict_xrf_maps(killed, client=client, progress=lambda d, t, s: seen.append((d, t)) if s == stage
                                   else None)
    assert seen[0] == (int(kept.sum()), 4) and seen[-1] == (4, 4)
    assert _json(again) == _json(local)
    _assert_same_arrays(ref.root[f"predicted/{name}"], killed.root[f"predicted/{name}"])
    assert _record(killed, f"predicted/{name}") == _record(ref, f"predicted/{name}")

    # the CLI: --scheduler
    cli = _copy(trained_path, tmp_path / "cli.nightwatch.zarr")
    with one_thread():
        assert main(["predict-xrf", str(cli.path), "--json", "--scheduler", client.scheduler.address]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == name
    _assert_same_arrays(ref.root[f"predicted/{name}"], PaintingStore.open(cli.path).root[f"predicted/{name}"])
