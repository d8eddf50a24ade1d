"""Bad input to every command (issue 11): one sentence naming the file or option, exit code 2, no traceback,
nothing half-written.

The table is run in-process through ``cli.main``, so an unexpected exception fails the test with its
traceback (that is the point: every case must be caught as a sentence).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _search_support import ColourTextureEncoder, copy_store, write_embeddings
from napari_nightwatch.cli import main


@pytest.fixture(scope="module")
def world(synthetic_store, tmp_path_factory):
    """Stores at several stages and a folder of broken files."""
    from napari_nightwatch.search import build_index
    from napari_nightwatch.synth import load_ground_truth
    from napari_nightwatch.xrf.maps import fit_store

    root = tmp_path_factory.mktemp("bad")
    plain = copy_store(synthetic_store, root / "plain.nightwatch.zarr")  # mosaic + XRF cube only
    ready = copy_store(synthetic_store, root / "ready.nightwatch.zarr")
    fit_store(ready, elements=list(load_ground_truth(ready).families), refine=False)
    enc = ColourTextureEncoder()
    grid = write_embeddings(ready, enc, tile=32)
    build_index(ready, grid.grid_id, enc.model_id)
    f = root / "files"
    f.mkdir()
    import h5py
    import tifffile
    from PIL import Image

    tifffile.imwrite(f / "ok.tif", np.zeros((64, 64, 3), np.uint8))
    data = (f / "ok.tif").read_bytes()
    (f / "truncated.tif").write_bytes(data[: len(data) // 3])
    (f / "text.tif").write_text("not an image")
    (f / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(f / "dpi.jpg", dpi=(100, 100))
    (f / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with h5py.File(f / "flat.h5", "w") as h:
        h["data"] = np.zeros((8, 8), np.float32)
    np.save(f / "nan.npy", np.full((4, 4, 64), np.nan, np.float32))
    np.save(f / "neg.npy", -np.ones((4, 4, 64), np.float32))
    inf = np.ones((4, 4, 64), np.float32)
    inf[1, 1, 3] = np.inf
    np.save(f / "inf.npy", inf)
    np.save(f / "flat.npy", np.ones((4, 4), np.float32))
    (f / "spectrum.csv").write_text("energy_kev,counts\nnan,1\n")
    (f / "points.csv").write_text("xrf_y,xrf_x,mosaic_y,mosaic_x\n1,2\n")
    (f / "map.tif").write_bytes(b"II*\0")
    return {"plain": str(plain.path), "ready": str(ready.path), "files": f, "root": root,
            "grid": grid.grid_id, "model_id": enc.model_id}


def _cases(w) -> list[tuple[list[str], str | None]]:
    P, R, F, D = w["plain"], w["ready"], w["files"], w["root"]
    missing = str(D / "nowhere.nightwatch.zarr")
    new = str(D / "new.nightwatch.zarr")
    not_store = str(F)
    cases: list[tuple[list[str], str | None]] = []
    add = cases.append
    # ---- a store that is not there, or not a store, for every command that reads one
    for cmd in (["info"], ["index"], ["search", "--text", "x"], ["xrf-maps"], ["spectrum", "--pixel", "1,1"],
                ["register", "--auto"], ["train-xrf"], ["predict-xrf"], ["embed", "--model", "nightwatch-tiny",
                                                                        "--pretrained", "none"]):
        add(([cmd[0], missing, *cmd[1:]], "nowhere"))
        add(([cmd[0], not_store, *cmd[1:]], None))
        add(([cmd[0], str(F / "ok.tif"), *cmd[1:]], None))
    # ---- numbers that are not finite or out of range, per command
    nums = {
        "synth": (["synth", new], [("--size", ["nan", "-5", "0", "3"])]),
        "import-mosaic": (["import-mosaic", str(F / "ok.tif"), new], [("--pixel-size-um", ["nan", "inf", "-1", "0"])]),
        "import-xrf": (["import-xrf", str(F / "inf.npy"), new],
                       [("--pixel-size-um", ["nan", "-2", "0"]), ("--energy-gain-kev", ["nan", "0", "-0.01"]),
                        ("--energy-offset-kev", ["nan", "inf"])]),
        "embed": (["embed", R, "--model", "nightwatch-tiny", "--pretrained", "none"],
                  [("--tile-um", ["nan", "inf", "-10", "0"]), ("--stride-um", ["nan", "-1"]), ("--tile", ["0", "-3"]),
                   ("--stride", ["0", "-1"]), ("--batch-size", ["0", "-1"]), ("--level", ["-1", "99"]),
                   ("--workers", ["-1"]), ("--chunk-tiles", ["0", "-4"])]),
        "index": (["index", R], [("--memory-budget-gb", ["nan", "-1", "0"])]),
        "search": (["search", R, "--text", "red"],
                   [("-k", ["0", "-5"]), ("--iou", ["nan", "-0.1", "1.5"]), ("--colour-weight", ["nan", "-1", "2"])]),
        "xrf-maps": (["xrf-maps", P], [("--energy-gain-kev", ["nan", "0"]), ("--energy-offset-kev", ["inf"]),
                                       ("--row-shift", ["nan", "inf", "many"])]),
        "register": (["register", P, "--auto"], [("--search-px", ["nan", "-1", "0"])]),
        "train-xrf": (["train-xrf", R], [("--epochs", ["0", "-1"]), ("--threads", ["0", "-1"]),
                                         ("--seed", ["-1"])]),
        "fit-spectrum": (["fit-spectrum", str(F / "spectrum.csv")],
                         [("--energy-gain-kev", ["nan", "0"]), ("--excitation-kev", ["nan", "-5", "0"])]),
    }
    for base, opts in nums.values():
        for opt, values in opts:
            for v in values:
                add(([*base, f"{opt}={v}"], opt))
    # ---- coordinates
    for opt in ("--region", "--xrf-region"):
        for v in ("nan,0,10,10", "1,2,3", "a,b,c,d", "0,0,inf,5", "10,10,0,0"):
            add((["search", R, f"{opt}={v}"], None))
    for v in ("nan,1", "1", "x,y", "-1,-1", "100000,5"):
        add((["search", R, f"--xrf-pixel={v}"], None))
        add((["spectrum", P, f"--pixel={v}"], None))
    for v in ("0,0,1", "nan,0,4,4", "4,4,0,0", "-50,-50,-10,-10"):
        add((["spectrum", P, f"--region={v}"], None))
        add((["train-xrf", R, f"--train-region={v}"], "region"))
    add((["search", R, "--region", "-100,-100,-50,-50"], None))  # negative numbers after a space
    # ---- templates, texts and combinations
    for t in ("{} and {0}", "no placeholder", "{", "{x}"):
        add((["search", R, "--text", "red", "--template", t], "template"))
    add((["search", R, "--text", "   "], "empty"))
    add((["search", R], "Say what to look for"))
    add((["search", R, "--xrf-pixel", "1,1", "--text", "red"], "cannot be combined"))
    add((["search", R, "--image", str(F / "text.tif")], None))
    add((["search", R, "--image", str(F / "missing.png")], None))
    add((["search", R, "--spectrum", str(F / "spectrum.csv")], None))
    add((["search", R, "--spectrum", str(F / "spectrum.csv"), "--xrf-match", "composition"], "XRF pixel or region"))
    add((["search", R, "--text", "red", "--xrf-match", "both"], "XRF pixel or region"))
    add((["search", R, "--grid", "L9-t1-s1", "--text", "red"], "L9-t1-s1"))
    add((["search", R, "--model-id", "nope", "--text", "red"], "nope"))
    add((["search", R, "--pigment", "unobtainium"], "unobtainium"))
    add((["search", R, "--where", "Co-K >> 3"], None))
    add((["search", R, "--where", "Zn-K > 0.1"], "Zn-K"))
    add((["search", R, "--where", "1 > 0"], None))
    # ---- files that are not what they claim
    for src in ("truncated.tif", "text.tif", "empty.png", "missing.tif"):
        add((["import-mosaic", str(F / src), new], src))
    add((["import-mosaic", str(F / "dpi.jpg"), new], "pixel"))
    for src in ("corrupt.h5", "flat.h5", "nan.npy", "neg.npy", "inf.npy", "flat.npy", "missing.npy", "text.tif"):
        add((["import-xrf", str(F / src), new], src))
    add((["import-xrf", str(F / "flat.h5"), new, "--dataset", "nope"], None))
    add((["import-maps", P, "--map", f"Pb-L={F / 'map.tif'}"], None))
    add((["import-maps", P, "--map", "Pb-L"], None))
    add((["import-maps", P, "--map", f"Qq-K={F / 'ok.tif'}"], None))
    add((["import-maps", P], None))
    add((["register", P, "--points", str(F / "points.csv")], None))
    add((["register", P, "--points", str(F / "missing.csv")], None))
    add((["register", P], None))
    add((["fit-spectrum", str(F / "missing.spe")], None))
    add((["fit-spectrum", str(F / "text.tif")], None))
    add((["fit-spectrum", str(F / "spectrum.csv")], None))
    # ---- writing where it should not
    add((["xrf-maps", R, "--export", str(F / "ok.tif")], "--export"))
    add((["predict-xrf", R, "--export", str(F / "ok.tif")], None))
    add((["xrf-maps", P, "--elements", "Qq-K"], None))
    add((["xrf-maps", P, "--elements", ""], None))
    add((["xrf-maps", P, "--elements", "Pb-L,Pb-L,Xx"], None))
    add((["spectrum", P, "--pixel", "1,1", "--out", str(F)], None))
    add((["spectrum", P], None))
    add((["spectrum", P, "--pixel", "1,1", "--region", "0,0,2,2"], None))
    add((["synth", P], None))  # exists already
    add((["synth", str(F / "ok.tif")], None))
    add((["embed", R, "--model", "no-such-model", "--pretrained", "none"], "no-such-model"))
    add((["embed", R, "--model", "nightwatch-tiny", "--pretrained", str(F / "missing.safetensors")], None))
    add((["embed", R, "--model", "nightwatch-tiny", "--pretrained", "none", "--device", "tpu:7"], None))
    add((["embed", R, "--model", "nightwatch-tiny", "--pretrained", "none", "--tile", "100000"], None))
    add((["index", R, "--grid", "nope"], "nope"))
    add((["train-xrf", P], None))  # no embeddings
    add((["predict-xrf", P], None))  # nothing trained
    add((["predict-xrf", R, "--encoder", "nope"], None))
    return cases


def test_bad_input_table(world, capsys):
    cases = _cases(world)
    assert len(cases) >= 150, len(cases)
    new = Path(world["root"]) / "new.nightwatch.zarr"
    failures = []
    for argv, fragment in cases:
        try:
            code = main(argv)
        except BaseException as exc:  # noqa: BLE001 -- a traceback is exactly what this table looks for
            failures.append((argv, "traceback", f"{type(exc).__name__}: {exc}"[:300]))
            capsys.readouterr()
            if new.exists():
                shutil.rmtree(new)
            continue
        err = capsys.readouterr().err.strip()
        # progress bars (tqdm, carriage returns) may precede the sentence; the sentence is one line
        lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "/s]" not in ln
                 and "%|" not in ln]
        ok = (code == 2 and len(lines) == 1 and "Traceback" not in err and lines[0].startswith("nightwatch")
              and (fragment is None or fragment in err))
        if new.exists():
            failures.append((argv, "half-written store left behind"))
            shutil.rmtree(new)
        if not ok:
            failures.append((argv, code, err[-300:]))
    assert not failures, json.dumps([[str(x) for x in f] for f in failures], indent=1)
