"""The pigment door (issue 14): search by pigment and by composition, alone or as a filter of another query.

Ground truth: the synthetic painting's surface pigment under each tile. Element maps
are fitted from its XRF cube with the real engine (``fit_store``), so the door is
judged on maps it did not make itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _search_support import ColourTextureEncoder, copy_store, write_embeddings
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.search.composition import pigment_tile_scores, tile_composition, where_tiles
from napari_nightwatch.search.run import Query, run_query
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.synth import PIGMENT_NAMES, load_ground_truth

TILE = 16  # 2 x 2 XRF pixels of the synthetic painting: small tiles, many pure ones


@pytest.fixture(scope="module")
def painting(synthetic_store, tmp_path_factory):
    """The shared synthetic painting with fitted element maps and a 16 px grid (read-only)."""
    from napari_nightwatch.store.tiles import make_grid
    from napari_nightwatch.xrf.maps import fit_store

    store = copy_store(synthetic_store, tmp_path_factory.mktemp("pigment") / "p.nightwatch.zarr")
    gt = load_ground_truth(store)
    fit_store(store, elements=list(gt.families), refine=False)
    make_grid(store, tile=TILE)
    return PaintingStore.open(store.path), gt


def _precision(gt, boxes, name: str) -> float:
    labels, _ = gt.tile_labels(np.asarray(boxes))
    return float(np.mean([PIGMENT_NAMES[int(lab)] == name for lab in labels]))


#: the one pigment the element maps and colour cannot separate on this painting: yellow
#: ochre (Fe, yellow-brown) against lead-tin yellow painted over umber (Fe + Mn from the
#: underpaint, yellow on top; Mn is a listed trace of ochres, so it does not veto). Its
#: figure is measured and reported, and guarded against getting worse.
HARD = {"yellow ochre": 0.5}


def test_pigment_search_precision_on_measured_maps(painting):
    store, gt = painting
    found = {}
    for name in gt.surface_pigments:
        res = run_query(store, Query(pigment=name, k=10), encoders=None)
        assert len(res.hits) == 10 and all(h.source == "measured" for h in res.hits)
        assert res.label == f"pigment {name}" and res.model_id == ""
        found[name] = _precision(gt, [h.box for h in res.hits], name)
    print("precision@10 by pigment:", found)
    for name, p in found.items():
        assert p >= HARD.get(name, 0.9), (name, p, found)


def test_colour_family_is_what_separates_pigments_of_one_element(painting):
    """Azurite and verdigris are both Cu: elements alone cannot tell them apart, colour can."""
    store, gt = painting
    comp = tile_composition(store)
    labels, _ = gt.tile_labels(comp.grid.boxes(comp.tiles))

    def p10(name, weight):
        s = np.nan_to_num(pigment_tile_scores(comp, name, colour_weight=weight), nan=-1)
        top = np.argsort(-s, kind="stable")[:10]
        return np.mean([PIGMENT_NAMES[int(v)] == name for v in labels[top]])

    assert p10("verdigris", 0.0) <= 0.2 and p10("verdigris", 0.75) >= 0.9


def test_synonyms_and_score_map(painting):
    store, gt = painting
    a = run_query(store, Query(pigment="smalt", k=5, with_map=True), encoders=None)
    b = run_query(store, Query(pigment="Smalte", k=5), encoders=None)  # German/Dutch spelling
    assert [h.tile for h in a.hits] == [h.tile for h in b.hits]
    assert a.similarity.shape == (512 // TILE, 512 // TILE)
    top = a.hits[0]
    r, c = divmod(top.tile, 512 // TILE)
    assert a.similarity[r, c] == pytest.approx(top.score, rel=1e-6)  # float32 map of a float64 score
    assert set(top.composition) >= {"Co-K"} and top.composition["Co-K"] > 0.5


def test_where_filter_hits_all_pass_and_are_smalt(painting):
    store, gt = painting
    expr = "Co-K > 0.3 and As-K > 0.15"
    res = run_query(store, Query(where=expr, k=10), encoders=None)
    assert res.hits and res.label == f"where {expr}"
    comp = tile_composition(store)
    passes, margin = where_tiles(comp, expr)
    passing = set(comp.tiles[passes].tolist())
    assert all(h.tile in passing for h in res.hits)
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
    for h in res.hits:
        assert h.composition["Co-K"] > 0.3 and h.composition["As-K"] > 0.15
    assert _precision(gt, [h.box for h in res.hits], "smalt") >= 0.9
    # z-scores too
    res_z = run_query(store, Query(where="z(Hg-L) > 5", k=5), encoders=None)
    assert _precision(gt, [h.box for h in res_z.hits], "vermilion") == 1.0


def test_composition_filter_restricts_an_exemplar_query(painting, tmp_path):
    """"Like this region, where Hg is high": every hit passes the filter; the best passing tiles of the
    unfiltered ranking come back in order."""
    store, gt = painting
    rw = copy_store(store, tmp_path / "e.nightwatch.zarr")
    enc = ColourTextureEncoder()
    grid = write_embeddings(rw, enc, tile=TILE)
    from napari_nightwatch.search import build_index

    build_index(rw, grid.grid_id, enc.model_id)
    store = PaintingStore.open(rw.path)
    box = tuple(float(v) for v in grid.boxes([40])[0])

    class Enc:
        def image_text(self, signature):
            return enc

    plain = run_query(store, Query(region=box, k=grid.n_tiles, merge=False, grid_id=grid.grid_id,
                                   model_id=enc.model_id), Enc())
    filt = run_query(store, Query(region=box, where="Hg-L > 0.5", k=5, merge=False, with_map=True,
                                  grid_id=grid.grid_id, model_id=enc.model_id), Enc())
    assert filt.label.endswith("where Hg-L > 0.5")
    comp = tile_composition(store, grid.grid_id)
    passes, _ = where_tiles(comp, "Hg-L > 0.5")
    passing = set(comp.tiles[passes].tolist())
    expected = [h.tile for h in plain.hits if h.tile in passing][:5]
    assert [h.tile for h in filt.hits] == expected
    # same similarity as without the filter (float16 rows read two ways: unit rows in float32 vs float64 dot)
    np.testing.assert_allclose([h.score for h in filt.hits],
                               [h.score for h in plain.hits if h.tile in set(expected)], atol=1e-5)
    # the heat map shows only passing tiles
    shown = np.flatnonzero(np.isfinite(filt.similarity.ravel()))
    assert set(shown.tolist()) <= passing


def test_cli_pigment_where_and_bad_input(painting, capsys):
    store, gt = painting
    base = ["search", str(store.path)]
    assert main(base + ["--pigment", "vermilion", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == {"pigment": "vermilion", "maps": "auto"}
    assert all(r["source"] == "measured" and "Hg-L" in r["composition"] for r in out["results"])
    assert out["composition"]["tiles_measured"] > 0
    assert main(base + ["--pigment", "vermilion", "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "measured" in table and "Hg-L" in table
    bad = [
        (["--pigment", "smallt"], "did you mean 'smalt'"),
        (["--pigment", "ultramarine"], "none of its elements is visible to XRF"),
        (["--where", "Zn-K > 0.3"], "needs an element map for Zn-K"),
        (["--where", "Co-K"], "comparison"),
        (["--where", "__import__('os').system('x')"], "not allowed"),
        (["--where", "Co-K > 0.3", "--maps", "predicted"], "no predicted element maps"),
        (["--pigment", "smalt", "--colour-weight", "2"], "--colour-weight"),
    ]
    for args, fragment in bad:
        assert main(base + args) == 2, args
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err and err.count("\n") == 1, (args, err)


def test_pigment_door_needs_a_grid_and_maps(synthetic_store, tmp_path):
    rw = copy_store(synthetic_store, tmp_path / "n.nightwatch.zarr")
    with pytest.raises(NightwatchError, match="no tile grids"):
        run_query(rw, Query(pigment="smalt"), encoders=None)
    from napari_nightwatch.store.tiles import make_grid

    make_grid(rw, tile=TILE)
    with pytest.raises(NightwatchError, match="no measured or predicted element maps"):
        run_query(rw, Query(pigment="smalt"), encoders=None)


def test_pigment_search_where_the_xrf_is_withheld(tmp_path):
    """Train the bridge on the left half, predict element maps from the photograph, and search the right
    half by pigment through the predicted maps alone. Judged for the pigments the training half shows
    (a pigment the model never saw with its XRF cannot be predicted: azurite is only on the right here)."""
    from _bridge_support import bridge_ready_store
    from napari_nightwatch.ml.bridge import predict_xrf_maps, train_xrf_bridge

    store, gt, _ = bridge_ready_store(tmp_path / "w.nightwatch.zarr", size=512)
    train = train_xrf_bridge(store, train_region=(0, 0, 512, 256), epochs=60, threads=1)
    predict_xrf_maps(store, encoder_id=train["encoder_id"])
    comp = tile_composition(store, maps="predicted")
    assert set(comp.source) == {"predicted"}
    boxes = comp.grid.boxes(comp.tiles)
    right = boxes[:, 1] >= 256
    labels, _ = gt.tile_labels(boxes)
    judged = {}
    for name in gt.surface_pigments:
        i = PIGMENT_NAMES.index(name)
        if min((labels[~right] == i).sum(), (labels[right] == i).sum()) < 10:
            continue  # too rare on one side to train or to fill ten hits
        s = np.nan_to_num(pigment_tile_scores(comp, name), nan=-1.0)
        s[~right] = -2.0
        top = np.argsort(-s, kind="stable")[:10]
        judged[name] = float(np.mean(labels[top] == i))
    print("precision@10 on predicted maps, withheld half:", judged)
    assert len(judged) >= 3 and min(judged.values()) >= 0.9, judged
    # through the runner: every hit says it rests on predicted maps
    res = run_query(store, Query(pigment="vermilion", maps="predicted", k=5), encoders=None)
    assert all(h.source == "predicted" for h in res.hits)


def test_spectrum_read_as_pigments(painting, capsys):
    """A region's fitted composition (mean of the element maps, uncertainties of a mean) read as pigments."""
    from napari_nightwatch.xrf.maps import load_element_maps, load_uncertainty
    from napari_nightwatch.xrf.reading import fitted_composition, read_pigments

    store, gt = painting
    names, maps = load_element_maps(store)
    _, unc, _ = load_uncertainty(store)
    for name in ("vermilion", "smalt", "bone black"):
        yy, xx = gt.pure_xrf_pixels(PIGMENT_NAMES.index(name))
        y, x = int(yy[len(yy) // 2]), int(xx[len(xx) // 2])
        box = (y - 1, x - 1, y + 2, x + 2)
        areas, sd, n = fitted_composition(store, region=box)
        assert n == 9
        i = names.index("Hg-L")
        block = maps[i, y - 1 : y + 2, x - 1 : x + 2].astype(np.float64)
        # float64 mean of nine float32 values, two summation orders: 1e-12 relative
        assert areas["Hg-L"] == pytest.approx(block.mean(), rel=1e-12)
        sig = unc[i, y - 1 : y + 2, x - 1 : x + 2].astype(np.float64)
        assert sd["Hg-L"] == pytest.approx(np.sqrt((sig**2).sum()) / 9, rel=1e-12)
        assert read_pigments(store, region=box)[0].pigment.name == name
    # a mosaic point reads the XRF pixel it falls in
    yy, xx = gt.pure_xrf_pixels(PIGMENT_NAMES.index("vermilion"))
    y, x = int(yy[0]), int(xx[0])
    from napari_nightwatch.core.geometry import apply_affine

    my, mx = apply_affine(store.xrf_affine, np.array([[y, x]], float))[0]
    a1, _, _ = fitted_composition(store, pixel=(y, x))
    a2, _, _ = fitted_composition(store, pixel=(my, mx), coords="mosaic")
    assert a1 == a2
    for bad, fragment in (({"pixel": (-5, 3)}, "outside"), ({"region": (0, 0, np.nan, 3)}, "finite"),
                          ({"pixel": (1, 1), "region": (0, 0, 2, 2)}, "exactly one")):
        with pytest.raises(NightwatchError, match=fragment):
            fitted_composition(store, **bad)
    # the CLI's spectrum command reads it too
    assert main(["spectrum", str(store.path), "--pixel", f"{y},{x}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pigments"]["matches"][0]["pigment"] == "vermilion"
