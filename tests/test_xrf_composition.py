"""Composition filters: parsing, precedence, z-scores, margins and one-sentence errors."""

from __future__ import annotations

import builtins
import re

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.xrf.composition import (
    MapStats,
    canonical_family,
    evaluate,
    map_stats,
    margin,
    parse_where,
)


def one_sentence(message: str) -> bool:
    """True when the message is a single sentence (no sentence break inside)."""
    return message.rstrip()[-1] in ".?" and not re.search(r"[.?!]\s+[A-Z]", message)


def truth_maps() -> dict[str, np.ndarray]:
    """Eight pixels covering every combination of three present/absent elements (robust max 1.0)."""
    bits = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], float)
    return {"Co-K": bits[:, 0], "As-K": bits[:, 1], "Pb-L": bits[:, 2]}


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "text, canonical",
    [
        ("Co-K > 0.3", "Co-K > 0.3"),
        ("Co-K > 0.5 or As-K > 0.5 and Pb-L > 0.5", "(Co-K > 0.5 or (As-K > 0.5 and Pb-L > 0.5))"),
        ("(Co-K > 0.5 or As-K > 0.5) and Pb-L > 0.5", "((Co-K > 0.5 or As-K > 0.5) and Pb-L > 0.5)"),
        ("not Co-K > 0.5 and As-K > 0.5", "(not Co-K > 0.5 and As-K > 0.5)"),
        ("not (Co-K > 0.5 and As-K > 0.5)", "not (Co-K > 0.5 and As-K > 0.5)"),
        ("not not Co-K > 0.5", "not not Co-K > 0.5"),
        ("0.2 < Co-K < 0.5", "(0.2 < Co-K and Co-K < 0.5)"),
        (
            "co-k >= .3 AND as_k <= 2e-1 Or NOT z(pbl) < -1.5",
            "((Co-K >= 0.3 and As-K <= 0.2) or not z(Pb-L) < -1.5)",
        ),
        ("Hg-L > Pb-L", "Hg-L > Pb-L"),
    ],
)
def test_parse_precedence_and_canonical_text(text, canonical):
    expr = parse_where(text)
    assert str(expr) == canonical
    # the canonical text parses back to the same tree
    assert parse_where(str(expr)) == expr


def test_families_are_canonical_sorted_and_unique():
    expr = parse_where("co-k > 0.3 and z(Co-K) > 1 or pb-l < 0.5 and As_K > 0.1")
    assert expr.families == ("As-K", "Co-K", "Pb-L")
    assert canonical_family("hgL") == "Hg-L"


@pytest.mark.parametrize(
    "text, truth",
    [
        ("Co-K > 0.5", lambda a, b, c: a),
        ("Co-K > 0.5 and As-K > 0.5", lambda a, b, c: a & b),
        ("Co-K > 0.5 or As-K > 0.5 and Pb-L > 0.5", lambda a, b, c: a | (b & c)),
        ("(Co-K > 0.5 or As-K > 0.5) and Pb-L > 0.5", lambda a, b, c: (a | b) & c),
        ("not Co-K > 0.5 and As-K > 0.5", lambda a, b, c: ~a & b),
        ("not (Co-K > 0.5 and As-K > 0.5)", lambda a, b, c: ~(a & b)),
        ("Co-K > 0.5 and not As-K > 0.5 or not Pb-L > 0.5", lambda a, b, c: (a & ~b) | ~c),
        ("Co-K > 0.3 and As-K > 0.2 and Pb-L < 0.5", lambda a, b, c: a & b & ~c),
        ("Co-K >= 1 and Pb-L <= 0", lambda a, b, c: a & ~c),
        ("Co-K > As-K", lambda a, b, c: a & ~b),
    ],
)
def test_evaluate_matches_truth_table(text, truth):
    maps = truth_maps()
    a, b, c = (maps[f] > 0.5 for f in ("Co-K", "As-K", "Pb-L"))
    got = evaluate(parse_where(text), maps)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, truth(a, b, c))
    np.testing.assert_array_equal(parse_where(text).evaluate(maps), got)


def test_values_are_fractions_of_the_robust_max():
    # 1000 pixels: 990 at 0..98 counts, 10 hot pixels at 1e6 (0.99 quantile); robust max is
    # the 99.5th percentile, so a single outlier does not squash the scale
    co = np.concatenate([np.arange(990) % 99, np.full(10, 1e6)]).astype(float)
    st = map_stats(co)
    assert st.robust_max == pytest.approx(np.percentile(co, 99.5))
    maps = {"Co-K": co}
    got = evaluate(parse_where("Co-K > 0.5"), maps)
    np.testing.assert_array_equal(got, co / st.robust_max > 0.5)
    # precomputed stats are used as given: fractions of 100 counts
    got = evaluate(parse_where("Co-K > 0.5"), maps, stats={"co-k": MapStats(100.0, 0.0, 1.0)})
    np.testing.assert_array_equal(got, co > 50)


def test_z_scores_use_median_and_mad():
    fe = np.tile(np.array([8.0, 9.0, 10.0, 11.0, 12.0]), 20)  # median 10, MAD 1
    sd = 1.4826
    st = map_stats(fe)
    assert (st.median, st.robust_sd) == (10.0, pytest.approx(sd))
    expr = parse_where("z(Fe-K) > 1")
    np.testing.assert_array_equal(evaluate(expr, {"Fe-K": fe}), fe == 12.0)
    np.testing.assert_allclose(margin(expr, {"Fe-K": fe}), (fe - 10.0) / sd - 1.0)
    expr = parse_where("z(Fe-K) < -1")
    np.testing.assert_array_equal(evaluate(expr, {"Fe-K": fe}), fe == 8.0)


def test_z_scores_of_a_sparse_map_stay_finite():
    # an element in 5 % of pixels: median and MAD are 0, the mean absolute deviation is not
    co = np.zeros(200)
    co[:10] = 40.0
    st = map_stats(co)
    assert st.median == 0 and st.robust_sd == pytest.approx(np.sqrt(np.pi / 2) * 2.0)
    np.testing.assert_array_equal(evaluate(parse_where("z(Co-K) > 3"), {"Co-K": co}), co > 0)


def test_margins_combine_by_min_max_and_negation():
    co = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    pb = np.array([1.0, 1.0, 0.5, 0.25, 0.0, 1.0])
    maps = {"Co-K": co, "Pb-L": pb}
    np.testing.assert_allclose(margin(parse_where("Co-K > 0.3"), maps), co - 0.3)
    np.testing.assert_allclose(margin(parse_where("Pb-L < 0.6"), maps), 0.6 - pb)
    both = parse_where("Co-K > 0.3 and Pb-L < 0.6")
    np.testing.assert_allclose(margin(both, maps), np.minimum(co - 0.3, 0.6 - pb))
    either = parse_where("Co-K > 0.3 or Pb-L < 0.6")
    np.testing.assert_allclose(either.margin(maps), np.maximum(co - 0.3, 0.6 - pb))
    np.testing.assert_allclose(margin(parse_where("not Co-K > 0.3"), maps), 0.3 - co)
    np.testing.assert_allclose(margin(parse_where("0.2 < Co-K < 0.6"), maps), np.minimum(co - 0.2, 0.6 - co))
    # inside the filter exactly where the margin is positive (strict comparisons)
    np.testing.assert_array_equal(evaluate(both, maps), margin(both, maps) > 0)


def test_unmeasured_pixels_never_match():
    co = np.array([1.0, np.nan, 0.0, 1.0])
    pb = np.array([0.0, 0.0, np.nan, 1.0])
    maps = {"Co-K": co, "Pb-L": pb}
    expr = parse_where("not Pb-L > 0.5 or Co-K > 0.5")
    np.testing.assert_array_equal(evaluate(expr, maps), [True, False, False, True])
    got = margin(expr, maps)
    assert np.isnan(got[1]) and np.isnan(got[2]) and np.isfinite(got[[0, 3]]).all()


def test_maps_on_a_pixel_grid_keep_their_shape():
    rng = np.random.default_rng(3)
    maps = {"Hg-L": rng.random((12, 9)), "S-K": rng.random((12, 9)), "chi2": np.ones(3)}
    out = evaluate(parse_where("Hg-L > 0.5 and S-K > 0.2"), maps)
    assert out.shape == (12, 9)


# ------------------------------------------------------------------ bad input
BAD_FILTERS = [
    ("", "empty"),
    ("   ", "empty"),
    ("Co-K", "not a comparison"),
    ("Co-K + 2", "arithmetic"),
    ("Co-K - 2 > 1", "arithmetic"),
    ("Co-K > 0.3 and", "expected after 'and'"),
    ("not", "expected after 'not'"),
    ("Co-K > 0.3 and or As-K > 0.1", "expected after 'and'"),
    ("Co-K > 0.3)", "no matching '('"),
    ("(Co-K > 0.3", "never closed"),
    ("Co-K > 0.3 Pb-L < 0.5", "'and' or 'or' is missing"),
    ("Co-K > 0.3 %", "unexpected"),
    ("Xx-K > 0.3", "'Xx-K' is not an XRF line family"),
    ("Co-Q > 0.3", "'Co-Q' is not an XRF line family"),
    ("H-K > 0.3", "'H-K' is not an XRF line family"),
    ("cobalt > 0.3", "'cobalt' is not an XRF line family"),
    ("Co-K > nan", "not a finite number"),
    ("Co-K > inf", "not a finite number"),
    ("Co-K > 1e999", "not a finite number"),
    ("Co-K > 0.3.2", "is not a number"),
    ("Co-K == 0.3", "compare with <, <=, > or >="),
    ("Co-K = 0.3", "compare with <, <=, > or >="),
    ("Co-K != 0.3", "compare with <, <=, > or >="),
    ("Co-K > 0.3 && As-K > 0.1", "write 'and'"),
    ("Co-K > 0.3 || As-K > 0.1", "write 'or'"),
    ("!Co-K > 0.3", "write 'not'"),
    ("0.3 > 0.2", "compares two numbers"),
    ("Co-K > > 0.3", "a line family, z(family) or a number is expected"),
    ("> 0.3", "a line family, z(family) or a number is expected"),
    ("z(0.3) > 2", "z() takes exactly one line family"),
    ("z Co-K > 2", "z() takes exactly one line family"),
    ("z(Co-K > 2", "z() takes exactly one line family"),
    ("Co-K > '0.3'", "not allowed"),
    ("Co-K > 0.3; import os", "not allowed"),
]


@pytest.mark.parametrize("text, fragment", BAD_FILTERS)
def test_bad_filters_raise_one_clear_sentence(text, fragment):
    with pytest.raises(NightwatchError) as err:
        parse_where(text)
    message = str(err.value)
    assert fragment in message
    assert one_sentence(message), message


def test_non_text_filter_is_refused():
    with pytest.raises(NightwatchError, match="must be text"):
        parse_where(0.3)  # type: ignore[arg-type]


def test_a_family_the_store_lacks_names_the_available_maps():
    maps = {"Pb-L": np.ones(4), "hg-l": np.ones(4), "chi2": np.ones(4)}
    with pytest.raises(NightwatchError) as err:
        evaluate(parse_where("Co-K > 0.3 and As-K > 0.1 and Pb-L < 0.5"), maps)
    message = str(err.value)
    assert "As-K, Co-K" in message and "available are: Hg-L, Pb-L." in message
    assert one_sentence(message)


def test_maps_of_different_shapes_are_refused():
    with pytest.raises(NightwatchError, match="differ in shape"):
        evaluate(parse_where("Co-K > 0.3 and Pb-L < 0.5"), {"Co-K": np.ones(4), "Pb-L": np.ones(5)})


def test_the_same_family_twice_is_refused():
    with pytest.raises(NightwatchError, match="twice"):
        evaluate(parse_where("Pb-L > 0.3"), {"Pb-L": np.ones(4), "pb-l": np.ones(4)})


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "Co-K > 0.3 or __import__('os')",
        "exec('x')",
        "eval > 0",
        "lambda: 0",
        "Co-K.__class__ > 0",
        "[Co-K] > 0",
        "Co-K > 0.3 if True else 1",
    ],
)
def test_python_is_never_evaluated(text):
    with pytest.raises(NightwatchError) as err:
        parse_where(text)
    assert "Cannot read the composition filter" in str(err.value)


def test_parsing_and_evaluating_use_no_python_evaluation(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a composition filter must not be evaluated as Python")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    expr = parse_where("(Co-K > 0.5 or z(As-K) > 1) and not Pb-L >= 0.5")
    maps = truth_maps()
    a, c = maps["Co-K"] > 0.5, maps["Pb-L"] > 0.5
    # As-K is 0/1 in equal numbers: median 0.5, MAD 0.5, so z(As-K) <= 0.68 never exceeds 1
    np.testing.assert_array_equal(evaluate(expr, maps), a & ~c)
    assert np.isfinite(margin(expr, maps)).all()
