"""A painting store on object storage (issue 15, item 2), against a local S3 server on 127.0.0.1.

Every command takes ``s3://bucket/NAME.nightwatch.zarr`` where it takes a store path and
writes exactly what it writes into a local store; the one-writer-per-part jobs hold a lease
object (no file locks on S3); a server that goes away mid-job gives one sentence, and the
rerun resumes from the finished chunks.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import time

import numpy as np
import pytest
import zarr

from _remote_support import s3_server  # noqa: F401
from napari_nightwatch.cli import main

pytest.importorskip("moto.server", reason="moto[server] is a testing extra")

TINY = ["--model", "nightwatch-tiny", "--pretrained", "none", "--tile", "32", "--stride", "16"]


def _run(argv, capsys) -> dict:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _arrays(path) -> dict[str, np.ndarray]:
    """Every array of a local zarr store by its path (the staging work area excluded)."""
    import warnings

    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():  # the lock files beside the hierarchy are not zarr nodes
        warnings.simplefilter("ignore")
        members = list(zarr.open_group(str(path), mode="r").members(max_depth=None))
    for name, node in members:
        if isinstance(node, zarr.Array) and not name.startswith("staging"):
            out[name] = node[...]
    return out


@pytest.fixture(scope="module")
def painting(tmp_path_factory):
    """A 256 px synthetic painting (32 x 32 XRF pixels), written once locally."""
    from napari_nightwatch.synth import synthesize_painting

    path = tmp_path_factory.mktemp("remote-store") / "p.nightwatch.zarr"
    synthesize_painting(path, size=256, seed=3)
    return path


def _upload(s3, painting, name: str) -> str:
    bucket = s3.make_bucket("paintings")
    url = f"{bucket}/{name}.nightwatch.zarr"
    s3.upload_folder(painting, url)
    return url


def test_every_command_on_an_s3_store_writes_what_a_local_store_gets(s3_server, painting, tmp_path,  # noqa: F811
                                                                       capsys):
    local = tmp_path / "local.nightwatch.zarr"
    shutil.copytree(painting, local)
    url = _upload(s3_server, painting, "remote")
    results = {}
    for where in (str(local), url):
        r = results[where] = {}
        r["maps"] = _run(["xrf-maps", where, "--elements", "Pb-L,Hg-L,Cu-K,Fe-K,Ca-K"], capsys)
        _run(["register", where, "--auto"], capsys)
        r["embed"] = _run(["embed", where, *TINY], capsys)
        _run(["index", where], capsys)
        r["search"] = _run(["search", where, "--region", "0,0,32,32", "-k", "5"], capsys)["results"]
        _run(["train-xrf", where, "--epochs", "4"], capsys)
        r["predict"] = _run(["predict-xrf", where], capsys)
        r["info"] = _run(["info", where], capsys)
    a, b = results[str(local)], results[url]
    assert a["maps"]["elements"] == b["maps"]["elements"]
    assert [h["tile"] for h in a["search"]] == [h["tile"] for h in b["search"]]
    assert [h["score"] for h in a["search"]] == [h["score"] for h in b["search"]]
    assert set(a["info"]["complete"]) == set(b["info"]["complete"])
    assert b["info"]["path"] == url
    # the whole S3 store, fetched back, holds the same arrays bit for bit: same code path,
    # same inputs and the same single process, so nothing may differ (no tolerance)
    import fsspec

    got = tmp_path / "fetched.nightwatch.zarr"
    fsspec.filesystem("s3").get(url.removeprefix("s3://"), str(got), recursive=True)
    la, lb = _arrays(local), _arrays(got)
    assert set(la) == set(lb)
    assert any(k.startswith("xrf_maps") for k in la) and any("embeddings" in k for k in la)
    assert any("predict" in k for k in la)
    for k in la:
        assert np.array_equal(la[k], lb[k], equal_nan=True), k
    # no credentials or endpoint are written into the store
    text = b"".join(p.read_bytes() for p in got.rglob("*.json") if p.stat().st_size < 1_000_000)
    assert b"testing" not in text and s3_server.endpoint.encode() not in text


def test_import_mosaic_into_a_new_s3_store(s3_server, tmp_path, capsys):  # noqa: F811

    from napari_nightwatch.store import PaintingStore

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    src = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(img).save(src)
    bucket = s3_server.make_bucket("imports")
    url = f"{bucket}/new.nightwatch.zarr"
    info = _run(["import-mosaic", str(src), url, "--pixel-size-um", "5"], capsys)
    assert info["mosaic"]["shape"] == [200, 300, 3]
    assert info["mosaic"]["pixel_size_um"] == pytest.approx(5.0)
    st = PaintingStore.open(url)
    assert st.is_remote and np.array_equal(np.asarray(st.mosaic_levels()[0]), img)
    # a failed import into a new S3 store leaves no half store behind
    assert main(["import-mosaic", str(tmp_path / "missing.png"), f"{bucket}/other.nightwatch.zarr",
                 "--pixel-size-um", "5"]) == 2
    import fsspec

    assert not fsspec.filesystem("s3").exists(f"{bucket.removeprefix('s3://')}/other.nightwatch.zarr")


def _put_lock(url: str, part: str, **rec) -> str:
    import fsspec

    key = f"{url.removeprefix('s3://')}/.job.{part}.lock"
    fs = fsspec.filesystem("s3")
    fs.pipe_file(key, json.dumps({"token": "someone-else", **rec}).encode())
    fs.invalidate_cache()
    return key


def test_a_second_writer_is_refused_by_the_lease_and_a_dead_one_is_broken(s3_server, painting, capsys):  # noqa: F811
    import fsspec

    url = _upload(s3_server, painting, "leased")
    args = ["xrf-maps", url, "--elements", "Pb-L,Hg-L", "--json"]
    # another machine holds a live lease on the maps: refused in one sentence naming it
    _put_lock(url, "xrf_maps", what="nightwatch xrf-maps", host="scanner-pc", pid=4242,
              started="2026-12-04T09:00:00+00:00", expires=time.time() + 600)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "scanner-pc" in err and "4242" in err and "nightwatch xrf-maps" in err and err.count("\n") == 1
    # the same holder whose lease ran out (it died without renewing) is broken and the job runs
    key = _put_lock(url, "xrf_maps", what="nightwatch xrf-maps", host="scanner-pc", pid=4242,
                    expires=time.time() - 1)
    assert main(args) == 0
    capsys.readouterr()
    assert not fsspec.filesystem("s3").exists(key)  # released after the job
    # a process of this host that has exited left a live-looking lease: broken at once too
    dead = os.fork()
    if dead == 0:  # pragma: no cover - the child exits at once
        os._exit(0)
    os.waitpid(dead, 0)
    _put_lock(url, "xrf_maps", what="nightwatch xrf-maps", host=socket.gethostname(), pid=dead,
              expires=time.time() + 600)
    assert main([*args[:-1], "--overwrite", "--json"]) == 0
    capsys.readouterr()


def test_a_lease_is_exclusive_and_renewed(s3_server):  # noqa: F811
    from napari_nightwatch.store.lease import LeaseLock, LeaseTimeout

    bucket = s3_server.make_bucket("locks")
    a = LeaseLock(f"{bucket}/x.lock", {"what": "a"}, lease_s=1.5)
    b = LeaseLock(f"{bucket}/x.lock", {"what": "b"}, lease_s=1.5)
    a.acquire()
    with pytest.raises(LeaseTimeout) as exc:
        b.acquire(timeout=2.5)  # longer than the lease: only renewal keeps a's hold
    assert exc.value.holder["what"] == "a" and a.is_held
    a.release()
    b.acquire()
    assert b.is_held
    b.release()


def test_server_gone_mid_job_is_one_sentence_and_the_rerun_resumes(s3_server, painting, tmp_path,  # noqa: F811
                                                                    capsys, monkeypatch):
    import napari_nightwatch.cli as cli
    import napari_nightwatch.xrf.maps as maps_mod
    from napari_nightwatch.store import PaintingStore

    url = _upload(s3_server, painting, "flaky")
    elements = "Pb-L,Hg-L,Cu-K,Fe-K,Ca-K"
    # the reference: the same fit, uninterrupted, in a local copy (same 8 x 8 blocks)
    local = tmp_path / "ref.nightwatch.zarr"
    shutil.copytree(painting, local)
    fit = maps_mod.fit_store
    monkeypatch.setattr(maps_mod, "fit_store", functools.partial(fit, block=(8, 8)))
    assert main(["xrf-maps", str(local), "--elements", elements, "--json"]) == 0
    capsys.readouterr()

    seen = []

    def stop_at_third_chunk(done, total, stage):
        seen.append((done, total))
        if "fit" in stage and done >= 3 and s3_server.server is not None:
            s3_server.stop()

    monkeypatch.setattr(cli, "_progress", lambda args: (stop_at_third_chunk, lambda: None))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # fail in seconds, not after botocore's default retries
    t0 = time.monotonic()
    assert main(["xrf-maps", url, "--elements", elements, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "rerun" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 120
    assert seen[-1][1] == 16  # 32 x 32 XRF pixels in 8 x 8 blocks
    s3_server.start()  # same port, same bucket contents

    st = PaintingStore.open(url)
    assert not st.is_complete("xrf_maps")
    monkeypatch.setattr(cli, "_progress", lambda args: (lambda *a: seen.append(a), lambda: None))
    seen.clear()
    assert main(["xrf-maps", url, "--elements", elements, "--json"]) == 0
    capsys.readouterr()
    fitted = [d for d, _t, s in seen if "fit" in s]
    assert fitted and fitted[0] >= 3  # resumed: the chunks finished before the stop were not refitted
    st = PaintingStore.open(url)
    assert st.is_complete("xrf_maps")
    import fsspec

    got = tmp_path / "got.nightwatch.zarr"
    fsspec.filesystem("s3").get(f"{url.removeprefix('s3://')}/xrf_maps", str(got / "xrf_maps"), recursive=True)
    ref = zarr.open_group(str(local / "xrf_maps"), mode="r")
    new = zarr.open_group(str(got / "xrf_maps"), mode="r")
    names = [n for n, node in ref.members(max_depth=None) if isinstance(node, zarr.Array)]
    assert names
    for n in names:  # chunks are fitted independently: a resumed fit equals an uninterrupted one exactly
        assert np.array_equal(ref[n][...], new[n][...], equal_nan=True), n
