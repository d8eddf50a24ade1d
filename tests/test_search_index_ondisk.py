"""The index at Night Watch scale (issue 15, item 4): on-disk IVF-PQ and sharded builds.

A store with 28,900 tiles (a 4 px grid at stride 3 over the 512 px synthetic painting)
holds seeded, clustered random unit vectors of dimension 64 as its embeddings: enough
for IVF-PQ training (256 lists, 8-bit codebooks), cheap to write, and without the
near-duplicate tiles of a real painting, so rankings have no ties.

Equality is exact throughout. The on-disk and in-memory indexes are the same trained
index and codes (written with ``write_index`` vs ``serialize_index``, which produce the
same bytes), searched by the same code, re-ranked from the same float16 rows. A sharded
build runs the same per-shard function on the same rows, in-process or on a
``LocalCluster`` worker, and appends the lists in row order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import distributed
import numpy as np
import pytest

from _remote_support import s3_server  # noqa: F401
from _search_support import ColourTextureEncoder
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.jsonutil import jsonable
from napari_nightwatch.search.index import add_to_index, build_index, choose_index, load_index
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.embeddings import embedding_signature
from napari_nightwatch.store.tiles import make_grid

ENC = ColourTextureEncoder()  # supplies the model signature; the vectors are written directly
DIM = 64
CHUNK_TILES = 4096
SHARD_ROWS = 8_000  # 4 shards over 28,900 rows


def _write_clustered_embeddings(store: PaintingStore, done_chunks: int | None = None) -> str:
    """Seeded unit vectors from 300 clusters as the embeddings of a 4 px / stride 3 grid; returns the grid id.

    ``done_chunks`` marks only the first chunks done (an embedding still running).
    """
    grid = make_grid(store, level=0, tile=4, stride=3, mask="none")
    n = grid.n_tiles
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 300, n)] + 0.12 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = f"grids/{grid.grid_id}/embeddings/{ENC.model_id}"
    if store.has(path):
        del store.root[path]
    g = store.group(path, create=True)
    g.create_array("vectors", data=x.astype(np.float16), chunks=(CHUNK_TILES, DIM))
    n_chunks = -(-n // CHUNK_TILES)
    done = np.zeros(n_chunks, bool)
    done[: n_chunks if done_chunks is None else done_chunks] = True
    g.create_array("done", data=done, chunks=(n_chunks,))
    g.attrs["nightwatch"] = jsonable(
        {"signature": embedding_signature(store, ENC, grid), "dim": DIM, "chunk_tiles": CHUNK_TILES}
    )
    if done.all():
        store.mark_complete(path, model_id=ENC.model_id)
    return grid.grid_id


def _queries(n: int = 100, seed: int = 5) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _copy(src, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _index_bytes(store) -> np.ndarray:
    g = PaintingStore.open(store).root[f"grids/{GRID}/index/{ENC.model_id}"]
    return np.asarray(g["faiss"][...])


GRID = "L0-t4-s3"


@pytest.fixture(scope="module")
def base(tmp_path_factory, synthetic_store) -> str:
    """The synthetic painting with the clustered embeddings (never written to again)."""
    path = tmp_path_factory.mktemp("ondisk") / "base.nightwatch.zarr"
    shutil.copytree(synthetic_store.path, path)
    assert _write_clustered_embeddings(PaintingStore.open(path, mode="r+")) == GRID
    return str(path)


@pytest.fixture(scope="module")
def built(base, tmp_path_factory) -> dict[str, str]:
    """The same embeddings indexed as in-memory IVF-PQ ("ram") and on-disk IVF-PQ ("disk")."""
    root = tmp_path_factory.mktemp("built")
    out = {"ram": _copy(base, root / "ram.nightwatch.zarr"), "disk": _copy(base, root / "disk.nightwatch.zarr")}
    build_index(out["ram"], kind="ivfpq")
    build_index(out["disk"], on_disk=True)
    return out


def test_choice_goes_on_disk_when_no_in_ram_index_fits():
    nw = 14_300_000
    # 200 MB: even 16-byte codes (14.3 M x 32 B = 458 MB) exceed it in RAM; on disk only
    # centroids, codebooks and list offsets stay resident
    spec = choose_index(nw, 512, memory_budget_bytes=200_000_000)
    assert spec.kind == "ivfpq" and spec.on_disk and spec.params["m"] == 64
    assert spec.bytes_per_vector == 0 and spec.disk_bytes_per_vector == 2 * 512 + 64 + 16
    assert spec.memory_bytes(nw) == 4 * 512 * (8192 + 256) + 24 * 8192  # 17.5 MB
    assert "on disk" in spec.reason
    # the 4 GB default keeps the Night Watch in RAM, as before
    assert not choose_index(nw, 512).on_disk
    assert choose_index(5_000, DIM, on_disk=True).on_disk
    with pytest.raises(NightwatchError, match="memory_budget_bytes"):
        choose_index(nw, 512, memory_budget_bytes=200_000_000, on_disk=False)
    with pytest.raises(NightwatchError, match="Only an IVF-PQ index can be kept on disk"):
        choose_index(5_000, DIM, kind="flat", on_disk=True)


def test_on_disk_index_equals_in_memory(built):
    import faiss

    ram, disk = load_index(built["ram"]), load_index(built["disk"])
    assert not ram.on_disk and disk.on_disk and disk.attrs["on_disk"] is True
    assert isinstance(faiss.downcast_InvertedLists(disk.index.invlists), faiss.OnDiskInvertedLists)
    assert isinstance(faiss.downcast_InvertedLists(ram.index.invlists), faiss.ArrayInvertedLists)
    assert isinstance(disk.tile_ids, np.memmap) and isinstance(disk.rerank.chunks[0], np.memmap)
    # the file FAISS maps is the store's own chunk, and holds the in-memory index byte for byte
    assert disk.index_file.is_relative_to(built["disk"])
    np.testing.assert_array_equal(np.fromfile(disk.index_file, np.uint8), _index_bytes(built["ram"]))
    np.testing.assert_array_equal(disk.tile_ids, ram.tile_ids)
    s_ram, t_ram = ram.search(_queries(), 10)
    s_disk, t_disk = disk.search(_queries(), 10)
    np.testing.assert_array_equal(t_disk, t_ram)
    np.testing.assert_array_equal(s_disk, s_ram)
    assert disk.attrs["recall_at_10"] == ram.attrs["recall_at_10"] >= 0.9
    # what stays in RAM: centroids, codebooks and list offsets, not the codes
    lists = disk.n_vectors * (disk.index.code_size + 8)
    assert disk.memory_bytes() < 0.5 * lists < ram.memory_bytes()


_MEASURE = textwrap.dedent(
    """
    import ctypes, gc, json, re, sys
    import numpy as np
    from napari_nightwatch.search.index import load_index
    from napari_nightwatch.store import PaintingStore

    HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def held():  # bytes malloc has handed out and not taken back (numpy arrays, FAISS structures)
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd

    def rss():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))

    def mapped(path):  # resident bytes of the mappings of one file
        total, mine = 0, False
        with open("/proc/self/smaps") as fh:
            for line in fh:
                if HEADER.match(line):
                    mine = line.split()[-1] == str(path)
                elif mine and line.startswith("Rss:"):
                    total += int(line.split()[1]) * 1024
        return total

    warm, path = sys.argv[1:3]
    vi = load_index(warm)  # imports, first-use allocations and caches, on another copy
    vi.search(np.ones((1, vi.dim), np.float32), 10)
    del vi
    gc.collect()
    store = PaintingStore.open(path)
    r, h = rss(), held()
    vi = load_index(store)
    out = {"rss": rss() - r, "held": held() - h, "lists": vi.n_vectors * (vi.index.code_size + 8),
           "header": 4 * vi.dim * (vi.params["nlist"] + (1 << vi.params["nbits"]))}
    if vi.on_disk:
        out["mapped_after_load"] = mapped(vi.index_file)
        vi.search(np.ones((1, vi.dim), np.float32), 10)
        out["mapped_after_query"] = mapped(vi.index_file)
    print(json.dumps(out))
    """
)


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not (os.path.exists("/proc/self/smaps") and _has_mallinfo2()),
                    reason="reads resident memory from Linux /proc and glibc's malloc statistics")
def test_load_maps_the_lists_instead_of_reading_them(built, tmp_path):
    """Memory measured in fresh processes, each warmed up by loading another copy first."""

    # glibc raises its mmap threshold after each large free, so temporaries of the load could
    # linger in the heap and blur a measurement this small (lists of 462 kB); a fixed threshold
    # returns every block over 128 kB to the system when it is freed
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")

    def measure(kind: str) -> dict:
        warm = _copy(built[kind], tmp_path / f"warm-{kind}.nightwatch.zarr")
        res = subprocess.run([sys.executable, "-c", _MEASURE, warm, built[kind]], capture_output=True, text=True,
                             timeout=120, check=True, env=env)
        return json.loads(res.stdout.strip().splitlines()[-1])

    disk, ram = measure("disk"), measure("ram")
    lists = disk["lists"]  # 28,900 x (8 B code + 8 B id) = 462 kB, in one file with a 131 kB header
    # loading touches no page of the mapped file (2 pages of slack: 2 % of the lists) ...
    assert disk["mapped_after_load"] <= 0.02 * lists, disk
    # ... and the first query reads its lists through the map
    assert disk["mapped_after_query"] > 0, disk
    # the resident set grows by a small fraction of the lists (measured: 0.10-0.12 x, the
    # centroids and codebooks that FAISS reads included) ...
    assert disk["rss"] <= 0.25 * lists, disk
    # ... and what loading allocates is those ("header") plus a little (measured: header + 0.09 x)
    assert disk["held"] <= disk["header"] + 0.25 * lists, disk
    # the same index loaded into RAM allocates more than its lists (measured: 1.7 x, with the
    # tile ids): the measurement does see lists that are read
    assert ram["held"] >= lists, ram


def test_sharded_builds_on_a_local_cluster_equal_in_process(base, built, tmp_path, capsys):
    here = _copy(base, tmp_path / "here.nightwatch.zarr")
    there = _copy(base, tmp_path / "there.nightwatch.zarr")
    via_cli = _copy(base, tmp_path / "cli.nightwatch.zarr")
    info_here = build_index(here, on_disk=True, shard_rows=SHARD_ROWS)
    assert info_here["shards"] == 4 and info_here["workers"] == 0
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        info_there = build_index(there, on_disk=True, shard_rows=SHARD_ROWS, client=client)
        # in-memory IVF-PQ through the CLI, on the same scheduler
        assert main(["index", via_cli, "--index-type", "ivfpq", "--shard-rows", str(SHARD_ROWS),
                     "--scheduler", cluster.scheduler_address, "--json"]) == 0
        info_cli = json.loads(capsys.readouterr().out)
    assert info_there["shards"] == 4 and info_there["workers"] == 2
    assert info_cli["shards"] == 4 and info_cli["workers"] == 2 and info_cli["on_disk"] is False
    vi_here, vi_there = load_index(here), load_index(there)
    # the same quantizer, codes and list order: the same bytes, however the shards were spread
    np.testing.assert_array_equal(np.fromfile(vi_there.index_file, np.uint8), np.fromfile(vi_here.index_file, np.uint8))
    np.testing.assert_array_equal(_index_bytes(via_cli), _index_bytes(here))
    for name in ("rerank", "tile_ids"):
        a = PaintingStore.open(here).root[f"grids/{GRID}/index/{ENC.model_id}/{name}"]
        b = PaintingStore.open(there).root[f"grids/{GRID}/index/{ENC.model_id}/{name}"]
        np.testing.assert_array_equal(a[...], b[...])
    # and the same results as the one-shard in-process build of the fixture
    s, t = vi_there.search(_queries(), 10)
    s0, t0 = load_index(built["disk"]).search(_queries(), 10)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(s, s0)
    assert info_there["recall_at_10"] == info_here["recall_at_10"]


def test_cli_on_disk_index_and_search(base, tmp_path, capsys):
    path = _copy(base, tmp_path / "p.nightwatch.zarr")
    assert main(["index", path, "--index-type", "flat", "--on-disk", "--json"]) == 2
    assert "Only an IVF-PQ index can be kept on disk" in capsys.readouterr().err
    assert main(["index", path, "--on-disk", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_type"] == "ivfpq" and out["on_disk"] is True and out["n_vectors"] == 28_900
    assert main(["search", path, "--region", "0,0,4,4", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and hits[0]["tile"] == 0  # the exemplar's own tile first


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_on_disk_index_is_refused(built, tmp_path, capsys, damage):
    path = _copy(built["disk"], tmp_path / "d.nightwatch.zarr")
    f = load_index(path).index_file
    raw = bytearray(f.read_bytes())
    if damage == "flip":
        raw[-100] ^= 0xFF  # one byte of the last inverted list (the lists end the file)
        f.write_bytes(bytes(raw))
    elif damage == "truncate":
        f.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        f.unlink()
    with pytest.raises(NightwatchError, match="is damaged") as err:
        load_index(path)
    text = str(err.value)
    assert text.endswith(".") and ". " not in text.rstrip(".")  # one sentence
    assert main(["search", path, "--region", "0,0,4,4", "--json"]) == 2
    assert "damaged" in capsys.readouterr().err


def test_add_to_an_on_disk_index(synthetic_store, tmp_path):
    """Tiles embedded after the build are added; the files equal the in-memory index extended alike."""
    paths = {}
    for name in ("disk", "ram"):
        paths[name] = _copy(synthetic_store.path, tmp_path / f"{name}.nightwatch.zarr")
        _write_clustered_embeddings(PaintingStore.open(paths[name], mode="r+"), done_chunks=4)
    first = build_index(paths["disk"], on_disk=True)
    build_index(paths["ram"], kind="ivfpq")
    assert first["n_vectors"] == 4 * CHUNK_TILES
    for name in ("disk", "ram"):
        _write_clustered_embeddings(PaintingStore.open(paths[name], mode="r+"))  # the rest, later
    with pytest.raises(NightwatchError, match="index --add"):
        load_index(paths["disk"])
    assert add_to_index(paths["disk"]) == {"added": 28_900 - 4 * CHUNK_TILES, "n_vectors": 28_900,
                                           "index_type": "ivfpq"}
    add_to_index(paths["ram"])
    disk, ram = load_index(paths["disk"]), load_index(paths["ram"])
    assert disk.on_disk and disk.n_vectors == 28_900 and disk.attrs["n_added_since_build"] == 28_900 - 4 * CHUNK_TILES
    np.testing.assert_array_equal(np.fromfile(disk.index_file, np.uint8), _index_bytes(paths["ram"]))
    np.testing.assert_array_equal(disk.search(_queries(), 10)[1], ram.search(_queries(), 10)[1])


def test_store_on_object_storage_fetches_the_index_once(s3_server, built, base, tmp_path):  # noqa: F811
    bucket = s3_server.make_bucket("nightwatch")
    url = f"{bucket}/disk.nightwatch.zarr"
    s3_server.upload_folder(built["disk"], url)
    cache = tmp_path / "cache"
    vi = load_index(url, cache_dir=cache)
    digest = PaintingStore.open(built["disk"]).root[f"grids/{GRID}/index/{ENC.model_id}"].attrs["checksum"]["sha256"]
    entry = cache / "index" / digest[:32]
    assert vi.on_disk and vi.index_file == entry / "index.faiss" and (entry / "tile_ids.i8").is_file()
    local = load_index(built["disk"])
    s, t = vi.search(_queries(), 10)
    s0, t0 = local.search(_queries(), 10)
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(s, s0)
    assert sorted(p.name for p in (entry / "rerank").iterdir()) == ["0.f16"]  # fetched when first searched
    # a second load memory-maps the cached files: nothing is fetched again
    stamp = vi.index_file.stat().st_mtime_ns, vi.index_file.stat().st_ino
    again = load_index(url, cache_dir=cache)
    assert (again.index_file.stat().st_mtime_ns, again.index_file.stat().st_ino) == stamp
    # a damaged cached copy is refused and dropped, and the next load fetches it afresh
    raw = bytearray(again.index_file.read_bytes())
    raw[-100] ^= 0xFF
    again.index_file.write_bytes(bytes(raw))
    with pytest.raises(NightwatchError, match="is damaged"):
        load_index(url, cache_dir=cache)
    assert not entry.exists()
    np.testing.assert_array_equal(load_index(url, cache_dir=cache).search(_queries(), 10)[1], t0)
    # built on object storage: the same index bytes, and the builder's copy is the cache entry
    url2 = f"{bucket}/base.nightwatch.zarr"
    s3_server.upload_folder(base, url2)
    info = build_index(url2, on_disk=True, cache_dir=tmp_path / "cache2")
    assert info["on_disk"] and info["recall_at_10"] == local.attrs["recall_at_10"]
    remote_built = load_index(url2, cache_dir=tmp_path / "cache2")
    np.testing.assert_array_equal(np.fromfile(remote_built.index_file, np.uint8),
                                  np.fromfile(local.index_file, np.uint8))
