"""The pigment library: table completeness, name look-up, map scores and composition readings."""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from importlib import resources

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.xrf.composition import map_stats
from napari_nightwatch.xrf.lines import get_family
from napari_nightwatch.xrf.pigments import (
    COLOURS,
    find_pigment,
    match_families,
    pigment_library,
    pigment_names,
    pigment_score,
    read_composition,
    read_pigment_table,
)


def one_sentence(message: str) -> bool:
    """True when the message is a single sentence (no sentence break inside)."""
    return message.rstrip()[-1] in ".?" and not re.search(r"[.?!]\s+[A-Z]", message)


def packaged_table() -> dict:
    text = resources.files("napari_nightwatch.xrf").joinpath("pigments.json").read_text(encoding="utf-8")
    return json.loads(text)


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


# ------------------------------------------------------------------ the table
def test_table_is_versioned_and_large_enough():
    data = packaged_table()
    assert data["schema_version"] == 1
    assert len(data["pigments"]) >= 40
    assert len(pigment_library()) == len(data["pigments"])


def test_every_row_has_elements_or_a_reason_and_a_source():
    ids = set()
    for p in pigment_library():
        assert p.id not in ids
        ids.add(p.id)
        assert p.source.strip() and len(p.source) > 20, p.id
        assert p.colour in COLOURS
        assert isinstance(p.first_use, int) and -50000 < p.first_use < 2000
        if p.xrf_visible:
            assert p.required_families, p.id
            assert all(0 < e.weight <= 1 for e in p.elements)
        else:
            assert not p.elements and len(p.note) > 30, p.id
        for fam in (*p.families, *p.indicators):
            assert get_family(fam).name == fam


def test_the_issue_pigments_are_all_there():
    wanted = [
        "lead white",
        "chalk",
        "gypsum",
        "bone black",
        "lamp black",
        "vermilion",
        "red lead",
        "red ochre",
        "yellow ochre",
        "umber",
        "raw sienna",
        "burnt sienna",
        "orpiment",
        "realgar",
        "lead-tin yellow I",
        "lead-tin yellow II",
        "Naples yellow",
        "azurite",
        "malachite",
        "verdigris",
        "smalt",
        "natural ultramarine",
        "synthetic ultramarine",
        "Prussian blue",
        "cobalt blue",
        "cerulean blue",
        "emerald green",
        "Scheele's green",
        "chrome yellow",
        "chrome green",
        "viridian",
        "cadmium yellow",
        "cadmium red",
        "zinc white",
        "titanium white",
        "barium white",
        "blanc fixe",
        "lithopone",
        "cobalt violet",
        "manganese violet",
        "Egyptian blue",
        "green earth",
        "copper resinate",
        "red lake",
        "madder lake",
        "cochineal lake",
        "indigo",
        "gamboge",
        "Mars red",
        "Mars yellow",
    ]
    found = {find_pigment(n).id for n in wanted}
    assert len(found) == len(wanted) - 3  # blanc fixe, madder and cochineal lake are synonyms


def test_invisible_pigments_are_the_honest_ones():
    invisible = {p.id for p in pigment_library() if not p.xrf_visible}
    assert {
        "natural_ultramarine",
        "synthetic_ultramarine",
        "red_lake",
        "indigo",
        "gamboge",
        "lamp_black",
    } <= invisible
    for visible in ("lead_white", "smalt", "vermilion", "bone_black", "azurite", "prussian_blue"):
        assert find_pigment(visible).xrf_visible


def test_synthetic_painting_pigments_resolve():
    from napari_nightwatch.synth import PIGMENTS

    for sp in PIGMENTS:
        p = find_pigment(sp.name)
        # the synthetic painting's heavy elements are the library row's elements or traces
        heavy = {el for el in sp.composition if el not in ("Si", "K", "Ca", "S", "P")}
        assert heavy <= p.element_symbols | p.indicator_symbols, sp.name
        assert set(p.element_symbols) & set(sp.composition), sp.name


# ------------------------------------------------------------------ names
def test_every_name_and_synonym_resolves_to_its_row():
    for p in pigment_library():
        for label in (p.name, p.id, *p.synonyms):
            for spelling in (label, label.upper(), label.lower(), strip_accents(label), f"  {label} "):
                assert find_pigment(spelling) is p, (spelling, p.id)


@pytest.mark.parametrize(
    "name, pigment",
    [
        ("loodwit", "lead white"),  # Dutch
        ("blanc de plomb", "lead white"),  # French
        ("Bleiweiß", "lead white"),  # German
        ("BLEIWEISS", "lead white"),
        ("biacca", "lead white"),  # Italian
        ("vermiljoen", "vermilion"),
        ("Vermillon", "vermilion"),
        ("zinnober", "vermilion"),
        ("cinabro", "vermilion"),
        ("smalte", "smalt"),
        ("Azzurro di Smalto", "smalt"),
        ("céruse", "lead white"),
        ("ceruse", "lead white"),
        ("Preussischblau", "Prussian blue"),
        ("bleu egyptien", "Egyptian blue"),
        ("Ägyptischblau", "Egyptian blue"),
        ("terre d’ombre", "raw umber"),
        ("scheeles green", "Scheele's green"),
        ("lead tin yellow", "lead-tin yellow I"),
        ("Bleizinngelb", "lead-tin yellow I"),
        ("giallo di Napoli", "Naples yellow"),
        ("vert émeraude", "viridian"),
        ("lead_white", "lead white"),
    ],
)
def test_synonyms_in_five_languages(name, pigment):
    assert find_pigment(name).name == pigment


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(NightwatchError) as err:
        find_pigment("smallt")
    message = str(err.value)
    assert "'smallt'" in message and "did you mean 'smalt'" in message and one_sentence(message)
    with pytest.raises(NightwatchError) as err:
        find_pigment("vermilon")
    assert "(vermilion)" in str(err.value) and one_sentence(str(err.value))
    with pytest.raises(NightwatchError, match="such as 'lead white'") as err:
        find_pigment("qwertyuiop")
    assert one_sentence(str(err.value))
    with pytest.raises(NightwatchError, match="empty"):
        find_pigment("  ")


def test_pigment_names_for_completion():
    names = pigment_names()
    assert len(names) == len(pigment_library())
    assert names == sorted(
        names, key=lambda n: strip_accents(n).casefold().replace("-", " ").replace("'", "")
    )
    everything = pigment_names(include_synonyms=True)
    assert {"smalt", "Smalte", "Zinnober", "biacca"} <= set(everything) and len(everything) > 300


# ------------------------------------------------------------------ table validation
def broken(mutate) -> dict:
    data = copy.deepcopy(packaged_table())
    mutate(data["pigments"])
    return data


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda rows: rows[3].pop("source"), "needs a literature 'source'"),
        (lambda rows: rows[0].update(elements=[]), "no required element"),
        (lambda rows: rows[8].update(note=""), "needs a 'note' saying why"),
        (
            lambda rows: rows[8].update(elements=[{"family": "Ca-K", "weight": 1.0}]),
            "move them to 'indicators'",
        ),
        (lambda rows: rows[0]["elements"].append({"family": "Xx-K", "weight": 0.5}), "not a line family"),
        (lambda rows: rows[0]["elements"].__setitem__(0, {"family": "pb-l", "weight": 1}), "spelled 'Pb-L'"),
        (
            lambda rows: rows[0]["elements"].__setitem__(0, {"family": "Pb-L", "weight": 2}),
            "expected a number in",
        ),
        (lambda rows: rows[1]["synonyms"].append("Loodwit"), "already used by 'lead_white'"),
        (lambda rows: rows[0].update(colour="purple"), "expected one of white"),
        (lambda rows: rows[0].update(synonym=["x"]), "unknown field(s) synonym"),
        (lambda rows: rows[0].update(first_use="antiquity"), "approximate year"),
    ],
)
def test_table_validation_names_the_row(mutate, fragment):
    with pytest.raises(NightwatchError) as err:
        read_pigment_table(broken(mutate), where="test.json")
    message = str(err.value)
    assert message.startswith("test.json row ") and fragment in message, message
    assert one_sentence(message), message


def test_table_validation_checks_the_schema_version():
    data = packaged_table()
    data["schema_version"] = 2
    with pytest.raises(NightwatchError, match="schema_version 2"):
        read_pigment_table(data)


# ------------------------------------------------------------------ scoring element maps
def painted_maps(seed: int = 7) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A 60 x 60 painting with four patches and low noise elsewhere (counts per pixel)."""
    rng = np.random.default_rng(seed)
    shape = (60, 60)
    regions = {name: np.zeros(shape, bool) for name in ("smalt", "azurite", "lead white", "lead-tin yellow")}
    regions["smalt"][2:22, 2:22] = True
    regions["azurite"][2:22, 36:58] = True
    regions["lead white"][36:58, 2:22] = True
    regions["lead-tin yellow"][36:58, 36:58] = True
    level = {  # counts of each family in each painted region
        "Co-K": {"smalt": 60.0},
        "As-K": {"smalt": 25.0},
        "K-K": {"smalt": 90.0},
        "Cu-K": {"azurite": 400.0},
        "Pb-L": {"lead white": 1000.0, "lead-tin yellow": 800.0},
        "Sn-K": {"lead-tin yellow": 300.0},
        "Ca-K": {},
    }
    maps = {}
    for fam, where in level.items():
        peak = max(where.values(), default=50.0)
        m = rng.uniform(0.0, 0.03 * peak, shape)  # background noise, up to 3 % of the patch level
        for name, counts in where.items():
            m[regions[name]] = counts * rng.uniform(0.9, 1.0, int(regions[name].sum()))
        maps[fam] = m
    return maps, regions


def test_pigment_score_picks_out_each_painted_region_exactly():
    maps, regions = painted_maps()
    for name, truth in [
        ("smalt", regions["smalt"]),
        ("azurite", regions["azurite"]),
        ("lead-tin yellow", regions["lead-tin yellow"]),
    ]:
        score = pigment_score(maps, name)
        assert score.shape == (60, 60) and score.min() >= 0 and score.max() <= 1
        np.testing.assert_array_equal(score > 0.5, truth, err_msg=name)
    # lead white is Pb only: by presence it is also found under lead-tin yellow ...
    lead = regions["lead white"] | regions["lead-tin yellow"]
    np.testing.assert_array_equal(pigment_score(maps, "loodwit") > 0.5, lead)
    # ... and the exclusive score drops the pixels where Sn (which lead white lacks) is strong,
    # while maps of pure noise (Ca-K here) stay below their noise floor and penalise nothing
    np.testing.assert_array_equal(
        pigment_score(maps, "lead white", exclusive=1.0) > 0.5, regions["lead white"]
    )


def test_pigment_score_ranks_inside_above_outside():
    maps, regions = painted_maps()
    score = pigment_score(maps, "smalt")
    assert score[regions["smalt"]].min() > 0.8
    assert score[~regions["smalt"]].max() < 0.3


def test_supporting_elements_are_optional_and_other_shells_stand_in():
    maps, regions = painted_maps()
    no_k = {f: m for f, m in maps.items() if f != "K-K"}
    np.testing.assert_array_equal(pigment_score(no_k, "smalt") > 0.5, regions["smalt"])
    sn_l = {("Sn-L" if f == "Sn-K" else f): m for f, m in maps.items()}
    assert match_families("lead-tin yellow I", sn_l) == {"Pb-L": "Pb-L", "Sn-K": "Sn-L"}
    np.testing.assert_array_equal(pigment_score(sn_l, "lead-tin yellow") > 0.5, regions["lead-tin yellow"])


def test_pigment_score_per_tile_and_with_shared_stats():
    maps, regions = painted_maps()
    # tiles of 2 x 2 pixels: one value per tile, flattened
    tiles = {f: m.reshape(30, 2, 30, 2).mean(axis=(1, 3)).ravel() for f, m in maps.items()}
    truth = regions["azurite"].reshape(30, 2, 30, 2).all(axis=(1, 3)).ravel()
    np.testing.assert_array_equal(pigment_score(tiles, "azurite") > 0.5, truth)
    # scoring a crop with the whole painting's stats equals cropping the whole score
    stats = {f: map_stats(m) for f, m in maps.items()}
    crop = {f: m[:30, :30] for f, m in maps.items()}
    np.testing.assert_allclose(
        pigment_score(crop, "smalt", stats=stats), pigment_score(maps, "smalt")[:30, :30]
    )


def test_pigment_score_normalisations_and_unmeasured_pixels():
    maps, regions = painted_maps()
    for how in ("max", "robust"):
        np.testing.assert_array_equal(pigment_score(maps, "azurite", how) > 0.5, regions["azurite"])
    fractions = {"Cu-K": np.array([0.0, 0.2, 0.9, 1.4, np.nan])}
    np.testing.assert_allclose(pigment_score(fractions, "azurite", "none"), [0.0, 0.2, 0.9, 1.0, np.nan])


def test_pigment_score_errors_are_one_sentence():
    maps, _ = painted_maps()
    with pytest.raises(NightwatchError) as err:
        pigment_score(maps, "vermilion")
    message = str(err.value)
    assert "needs element maps for Hg-L" in message and "As-K, Ca-K, Co-K, Cu-K, K-K, Pb-L, Sn-K" in message
    assert one_sentence(message)
    with pytest.raises(NightwatchError) as err:
        pigment_score(maps, "cobalt green")
    assert "needs element maps for Zn-K (or another line family" in str(err.value)
    with pytest.raises(NightwatchError) as err:
        pigment_score(maps, "ultramarine")
    message = str(err.value)
    assert "natural ultramarine cannot be found in element maps" in message and "visible to XRF" in message
    assert one_sentence(message)
    with pytest.raises(NightwatchError, match="did you mean 'smalt'"):
        pigment_score(maps, "smallt")
    with pytest.raises(NightwatchError, match="Normalisation"):
        pigment_score(maps, "smalt", "percentile")
    with pytest.raises(NightwatchError, match="from 0 to 1"):
        pigment_score(maps, "smalt", exclusive=2)
    with pytest.raises(NightwatchError, match="differ in shape"):
        pigment_score({"Co-K": np.ones(4), "K-K": np.ones(5)}, "smalt")


def test_emerald_green_scores_where_cu_and_as_meet():
    maps, regions = painted_maps()
    maps["Cu-K"][regions["smalt"]] = 380.0  # copper where arsenic already is: Cu + As
    np.testing.assert_array_equal(pigment_score(maps, "emerald green") > 0.5, regions["smalt"])


# ------------------------------------------------------------------ reading a fitted composition
def test_vermilion_reads_first_for_mercury_and_sulphur():
    reading = read_composition(
        {"Hg-L": 5200.0, "S-K": 310.0, "Pb-L": 4.0, "Cu-K": 3.0},
        uncertainty={"Hg-L": 70.0, "S-K": 20.0, "Pb-L": 5.0, "Cu-K": 4.0},
    )
    best = reading[0]
    assert best.pigment.name == "vermilion" and best.score == pytest.approx(1.0)
    assert best.explained == ("Hg-L", "S-K")
    assert reading.present == ("Hg-L", "S-K") and reading.absent == ("Cu-K", "Pb-L")
    assert reading.unexplained == ()
    names = [m.pigment.name for m in reading]
    assert "lead white" not in names and "azurite" not in names  # they need absent elements


def test_smalt_reads_first_for_cobalt_and_arsenic():
    reading = read_composition(
        {"Co-K": 420.0, "As-K": 150.0, "Fe-K": 2.0}, uncertainty={"Co-K": 20.0, "As-K": 15.0, "Fe-K": 3.0}
    )
    assert reading[0].pigment.name == "smalt"
    assert reading[0].explained == ("As-K", "Co-K")
    assert reading[0].score > max(m.score for m in reading.matches[1:] if m.pigment.name != "cobalt violet")
    with_k = read_composition({"Co-K": 420.0, "As-K": 150.0, "K-K": 300.0})
    assert with_k[0].pigment.name == "smalt" and with_k[0].score > with_k[1].score


def test_reading_without_uncertainties_uses_a_relative_threshold():
    reading = read_composition({"Cu-K": 900.0, "As-K": 700.0, "Pb-L": 5.0})
    assert reading.present == ("As-K", "Cu-K") and reading.absent == ("Pb-L",)
    assert reading[0].pigment.name in ("Scheele's green", "emerald green")
    assert reading[0].score == pytest.approx(1.0)


def test_mixtures_and_unexplained_elements():
    reading = read_composition(
        {"Hg-L": 3000.0, "S-K": 150.0, "Pb-L": 9000.0, "Zn-K": 800.0, "Ar-K": 500.0}, top=1
    )
    assert [m.pigment.name for m in reading] == ["vermilion"]
    assert reading.unexplained == ("Pb-L", "Zn-K")  # Ar (air) is ignored
    assert "Ar-K" not in reading.present
    everything = read_composition({"Hg-L": 3000.0, "S-K": 150.0, "Pb-L": 9000.0, "Zn-K": 800.0}, top=10)
    assert [p.name for p in everything.mixture] == ["vermilion", "lead white", "zinc white"]
    assert everything.unexplained == ()
    as_json = json.loads(json.dumps(everything.to_dict()))
    assert as_json["mixture"] == ["vermilion", "lead white", "zinc white"]


def test_reading_never_offers_invisible_pigments_and_ranks_all_on_request():
    reading = read_composition({"S-K": 100.0, "Si-K": 80.0, "Al-K": 50.0}, top=None)
    visible = [p for p in pigment_library() if p.xrf_visible]
    assert len(reading) == len(visible)
    assert all(m.pigment.xrf_visible for m in reading)
    scores = [m.score for m in reading]
    assert scores == sorted(scores, reverse=True)
    assert read_composition({"Pb-L": 0.0, "Hg-L": -3.0}).matches == ()


def test_reading_refuses_non_numbers():
    with pytest.raises(NightwatchError, match="not a number"):
        read_composition({"Pb-L": "lots"})
