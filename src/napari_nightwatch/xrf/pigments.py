"""The pigment library: what an XRF scan shows of each painters' pigment.

This module owns the packaged, versioned table ``pigments.json`` (one row per
pigment: names and synonyms in English, Dutch, French, German and Italian,
characteristic line families with rough weights, trace indicators, colour family,
date of first use, whether XRF can see it at all, and a literature source), and
three uses of it, all numpy only:

* name look-up (:func:`find_pigment`, :func:`pigment_names`), case- and
  accent-insensitive, with the nearest names suggested for an unknown one;
* a per-pixel (or per-tile) score of how well element maps match a pigment
  (:func:`pigment_score`), for ``search --pigment``;
* a reading of a fitted composition (family areas of one spectrum) as a ranked
  list of pigments (:func:`read_composition`), for the spectrum viewer.

A pigment whose elements are all invisible to XRF (ultramarine, organic lakes,
carbon blacks) says so with an error instead of returning noise.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import numpy as np

from ..core.errors import NightwatchError
from .composition import MapStats, canonical_family, canonical_maps, map_stats, normalised_map

__all__ = [
    "COLOURS",
    "SCHEMA_VERSION",
    "CompositionReading",
    "colour_membership",
    "colour_prototypes",
    "Pigment",
    "PigmentElement",
    "PigmentMatch",
    "find_pigment",
    "match_families",
    "pigment_library",
    "pigment_names",
    "pigment_score",
    "read_composition",
    "read_pigment_table",
]

#: version of the ``pigments.json`` layout this module reads
SCHEMA_VERSION = 1
#: colour families a pigment row may name
COLOURS = ("white", "black", "red", "yellow", "green", "blue", "brown", "violet")
_TABLE = "pigments.json"
_ROW_KEYS = {
    "id",
    "name",
    "synonyms",
    "formula",
    "elements",
    "indicators",
    "colour",
    "first_use",
    "first_use_note",
    "xrf_visible",
    "note",
    "source",
}
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
# credit an indicator (typical trace) gets when it explains a present family, against 1 for
# a characteristic element: traces support a reading but are not what defines the pigment
_INDICATOR_CREDIT = 0.5
# presence counted for a required element whose families were not fitted at all
_UNKNOWN_PRESENCE = 0.5
# factor per required element that was fitted and found absent
_ABSENT_REQUIRED_FACTOR = 0.1
# robust standard deviations above the median below which a map is taken for noise
_NOISE_SIGMAS = 3.0


# ------------------------------------------------------------------ rows
@dataclass(frozen=True)
class PigmentElement:
    """One characteristic element of a pigment.

    Attributes
    ----------
    family
        Line family in the package's spelling (``"Co-K"``); any other family of the
        same element stands in for it when its map is missing (``Sn-L`` for ``Sn-K``).
    weight
        Rough relative importance, in (0, 1].
    required
        False for supporting elements (often light ones that air-path scanners miss):
        they raise a match when measured but never veto it.
    """

    family: str
    weight: float = 1.0
    required: bool = True

    @property
    def element(self) -> str:
        """Chemical symbol (``"Co"``)."""
        return self.family.split("-")[0]


@dataclass(frozen=True)
class Pigment:
    """One row of the pigment library.

    Attributes
    ----------
    id
        Stable identifier (``"lead_tin_yellow_1"``).
    name
        English name used in layer names and reports.
    synonyms
        Other English names and common Dutch, French, German and Italian ones.
    elements
        Characteristic elements; empty when ``xrf_visible`` is False.
    indicators
        Trace families that are typical but not always present (Ni, Bi, As in smalt).
    colour
        Colour family, one of :data:`COLOURS`.
    first_use
        Approximate year of first use (negative: BCE); ``first_use_note`` says it in words.
    xrf_visible
        False when no element of the pigment can be mapped by XRF; ``note`` says why.
    note
        What XRF sees of the pigment and what it is confused with.
    source
        Literature reference for the row.
    formula
        Chemical composition in words or symbols.
    """

    id: str
    name: str
    synonyms: tuple[str, ...]
    elements: tuple[PigmentElement, ...]
    indicators: tuple[str, ...]
    colour: str
    first_use: int
    xrf_visible: bool
    note: str
    source: str
    formula: str = ""
    first_use_note: str = ""

    @property
    def families(self) -> tuple[str, ...]:
        """Families of all characteristic elements, most important first."""
        return tuple(e.family for e in self.elements)

    @property
    def required_families(self) -> tuple[str, ...]:
        """Families whose maps a pigment search cannot do without."""
        return tuple(e.family for e in self.elements if e.required)

    @property
    def element_symbols(self) -> frozenset[str]:
        """Chemical symbols of the characteristic elements."""
        return frozenset(e.element for e in self.elements)

    @property
    def indicator_symbols(self) -> frozenset[str]:
        """Chemical symbols of the indicator (trace) families."""
        return frozenset(f.split("-")[0] for f in self.indicators)

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON types (for ``--json`` output)."""
        return {
            "id": self.id,
            "name": self.name,
            "synonyms": list(self.synonyms),
            "formula": self.formula,
            "elements": [
                {"family": e.family, "weight": e.weight, "required": e.required} for e in self.elements
            ],
            "indicators": list(self.indicators),
            "colour": self.colour,
            "first_use": self.first_use,
            "first_use_note": self.first_use_note,
            "xrf_visible": self.xrf_visible,
            "note": self.note,
            "source": self.source,
        }

    def __str__(self) -> str:
        return self.name


# ------------------------------------------------------------------ table
def _normalise_name(text: str) -> str:
    """Fold case, accents, apostrophes, hyphens and spacing (``"Bleiweiß"`` == ``"bleiweiss"``)."""
    s = unicodedata.normalize("NFKD", str(text))
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold()
    s = re.sub(r"[\u2019\u2018'`\u00b4]", "", s)
    s = re.sub(r"[-_/\u2010-\u2015]", " ", s)
    return " ".join(s.split())


def _row_error(where: str, index: int, row: Any, problem: str) -> NightwatchError:
    rid = row.get("id") if isinstance(row, Mapping) else None
    label = f"row {index + 1}" + (f" ({rid!r})" if isinstance(rid, str) else "")
    return NightwatchError(f"{where} {label}: {problem}.")


def _text_list(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return None
    return [v.strip() for v in value]


def _read_row(where: str, i: int, row: Any) -> Pigment:
    def fail(problem: str) -> NightwatchError:
        return _row_error(where, i, row, problem)

    if not isinstance(row, Mapping):
        raise fail("is not an object")
    unknown = sorted(set(row) - _ROW_KEYS)
    if unknown:
        raise fail(f"has unknown field(s) {', '.join(unknown)}; expected only {', '.join(sorted(_ROW_KEYS))}")
    rid = row.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise fail("needs an 'id' of lower-case letters, digits and underscores")
    name = row.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("needs a non-empty 'name'")
    synonyms = _text_list(row.get("synonyms", []))
    if synonyms is None:
        raise fail("'synonyms' must be a list of non-empty names")
    source = row.get("source")
    if not isinstance(source, str) or not source.strip():
        raise fail("needs a literature 'source'")
    visible = row.get("xrf_visible")
    if not isinstance(visible, bool):
        raise fail("needs 'xrf_visible' true or false")
    note = row.get("note", "")
    if not isinstance(note, str):
        raise fail("'note' must be text")
    colour = row.get("colour")
    if colour not in COLOURS:
        raise fail(f"has colour {colour!r}; expected one of {', '.join(COLOURS)}")
    first_use = row.get("first_use")
    if isinstance(first_use, bool) or not isinstance(first_use, int):
        raise fail("needs 'first_use' as an approximate year (negative for BCE)")
    for key in ("formula", "first_use_note"):
        if not isinstance(row.get(key, ""), str):
            raise fail(f"'{key}' must be text")

    raw_elements = row.get("elements", [])
    if not isinstance(raw_elements, list):
        raise fail("'elements' must be a list of {family, weight} objects")
    elements: list[PigmentElement] = []
    for el in raw_elements:
        if not isinstance(el, Mapping) or set(el) - {"family", "weight", "required"} or "family" not in el:
            raise fail("each element must be an object with 'family', 'weight' and optional 'required'")
        fam = _table_family(el["family"], fail)
        weight = el.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
            raise fail(f"element {fam} has weight {weight!r}; expected a number in (0, 1]")
        required = el.get("required", True)
        if not isinstance(required, bool):
            raise fail(f"element {fam} has 'required' {required!r}; expected true or false")
        elements.append(PigmentElement(fam, float(weight), required))
    symbols = [e.element for e in elements]
    if len(set(symbols)) != len(symbols):
        raise fail("lists an element twice")
    raw_indicators = _text_list(row.get("indicators", []))
    if raw_indicators is None:
        raise fail("'indicators' must be a list of line families")
    indicators = [_table_family(f, fail) for f in raw_indicators]

    if visible and not any(e.required for e in elements):
        raise fail("is XRF-visible but has no required element; list its elements or set xrf_visible false")
    if not visible:
        if elements:
            raise fail("is not XRF-visible but lists elements; move them to 'indicators'")
        if not note.strip():
            raise fail("is not XRF-visible and needs a 'note' saying why")
    return Pigment(
        id=rid,
        name=name.strip(),
        synonyms=tuple(synonyms),
        elements=tuple(elements),
        indicators=tuple(indicators),
        colour=colour,
        first_use=int(first_use),
        xrf_visible=visible,
        note=note.strip(),
        source=source.strip(),
        formula=str(row.get("formula", "")).strip(),
        first_use_note=str(row.get("first_use_note", "")).strip(),
    )


def _table_family(name: Any, fail) -> str:
    if not isinstance(name, str):
        raise fail(f"family {name!r} is not text")
    try:
        fam = canonical_family(name)
    except NightwatchError:
        raise fail(f"family {name!r} is not a line family like 'Co-K'") from None
    if fam != name:
        raise fail(f"family {name!r} should be spelled {fam!r}")
    return fam


def read_pigment_table(data: Mapping[str, Any], where: str = "The pigment table") -> tuple[Pigment, ...]:
    """Validate a parsed pigment table and build its rows.

    Parameters
    ----------
    data
        The parsed JSON: ``{"schema_version": 1, "pigments": [row, ...]}``.
    where
        How error sentences name the table (e.g. its file name).

    Returns
    -------
    tuple of Pigment
        In table order.

    Raises
    ------
    NightwatchError
        One sentence naming the row and the problem: a wrong schema version, a
        missing source, an XRF-visible row without elements, an invisible row without
        a note, a family that does not parse, or a name used by two rows.
    """
    if not isinstance(data, Mapping):
        raise NightwatchError(f"{where} is not a JSON object with 'schema_version' and 'pigments'.")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise NightwatchError(f"{where} has schema_version {version!r}; this version reads {SCHEMA_VERSION}.")
    rows = data.get("pigments")
    if not isinstance(rows, list) or not rows:
        raise NightwatchError(f"{where} has no 'pigments' list.")
    pigments = [_read_row(where, i, row) for i, row in enumerate(rows)]
    owner: dict[str, str] = {}
    for i, p in enumerate(pigments):
        for label in (p.id, p.name, *p.synonyms):
            key = _normalise_name(label)
            if owner.get(key, p.id) != p.id:
                raise _row_error(where, i, rows[i], f"name {label!r} is already used by {owner[key]!r}")
            owner[key] = p.id
    return tuple(pigments)


@dataclass(frozen=True)
class _Library:
    pigments: tuple[Pigment, ...]
    by_name: dict[str, Pigment] = field(default_factory=dict)  # normalised name -> row
    spelled: dict[str, str] = field(default_factory=dict)  # normalised name -> name as written


@functools.lru_cache(maxsize=1)
def _library() -> _Library:
    text = resources.files(__package__).joinpath(_TABLE).read_text(encoding="utf-8")
    pigments = read_pigment_table(json.loads(text), where=f"The packaged {_TABLE}")
    lib = _Library(pigments)
    for p in pigments:
        for label in (p.name, *p.synonyms, p.id):
            key = _normalise_name(label)
            lib.by_name.setdefault(key, p)
            lib.spelled.setdefault(key, label)
    return lib


@functools.lru_cache(maxsize=1)
def colour_prototypes() -> dict[str, tuple[float, float, float]]:
    """CIELAB (D65) prototype of each colour family, from the packaged table.

    Returns
    -------
    dict
        ``{family: (L, a, b)}`` for every name of :data:`COLOURS`.
    """
    text = resources.files(__package__).joinpath(_TABLE).read_text(encoding="utf-8")
    lab = json.loads(text).get("colour_families", {}).get("lab", {})
    missing = [c for c in COLOURS if c not in lab]
    if missing:
        raise NightwatchError(f"The packaged {_TABLE} has no CIELAB prototype for colour families {missing}.")
    return {c: tuple(float(v) for v in lab[c]) for c in COLOURS}


#: spread (CIELAB Delta E) of a colour family around its prototype: about the distance
#: between neighbouring ISCC-NBS hue names, so a colour halfway between two names
#: belongs to both about equally
COLOUR_SIGMA_LAB = 20.0


def colour_membership(rgb: np.ndarray, sigma: float = COLOUR_SIGMA_LAB) -> dict[str, np.ndarray]:
    """How much each colour looks like each colour family (soft, summing to 1).

    Parameters
    ----------
    rgb
        ``(..., 3)`` sRGB colours in [0, 1] (e.g. the mean colour of each tile).
    sigma
        Spread of a family around its prototype, in CIELAB Delta E (CIE76).

    Returns
    -------
    dict
        ``{family: (...) float64}``: Gaussian weights of the distance to each
        prototype, normalised over the families; NaN where the colour is not finite.
    """
    from skimage.color import rgb2lab

    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1:] != (3,):
        raise NightwatchError(f"Colours must have 3 channels (R, G, B); got shape {rgb.shape}.")
    finite = np.isfinite(rgb).all(-1)
    lab = rgb2lab(np.clip(np.nan_to_num(rgb), 0.0, 1.0).reshape(-1, 1, 3)).reshape(rgb.shape)
    protos = colour_prototypes()
    d2 = np.stack([((lab - np.asarray(p)) ** 2).sum(-1) for p in protos.values()], -1)
    # subtract the nearest distance before exponentiating so far-off colours do not underflow to 0/0
    w = np.exp(-(d2 - d2.min(-1, keepdims=True)) / (2.0 * sigma**2))
    w /= w.sum(-1, keepdims=True)
    return {c: np.where(finite, w[..., i], np.nan) for i, c in enumerate(protos)}


def pigment_library() -> tuple[Pigment, ...]:
    """Every pigment of the packaged table, in table order (read and validated once)."""
    return _library().pigments


def pigment_names(include_synonyms: bool = False) -> list[str]:
    """Pigment names for completion boxes, sorted alphabetically.

    Parameters
    ----------
    include_synonyms
        Also list every synonym (all languages), not only the English names.
    """
    lib = _library()
    names = [p.name for p in lib.pigments]
    if include_synonyms:
        names += [s for p in lib.pigments for s in p.synonyms]
    return sorted(dict.fromkeys(names), key=_normalise_name)


def find_pigment(name: str | Pigment) -> Pigment:
    """The library row for a name, synonym or id, ignoring case, accents, hyphens and apostrophes.

    Parameters
    ----------
    name
        E.g. ``"smalt"``, ``"Smalte"``, ``"vermillon"``, ``"bleiweiss"``, ``"lead_white"``;
        a :class:`Pigment` is returned as is.

    Raises
    ------
    NightwatchError
        For an unknown name, in one sentence suggesting the nearest known names.
    """
    if isinstance(name, Pigment):
        return name
    lib = _library()
    if not isinstance(name, str) or not name.strip():
        raise NightwatchError(
            "The pigment name is empty; give a name such as 'lead white', 'smalt' or 'vermilion'."
        )
    key = _normalise_name(name)
    if key in lib.by_name:
        return lib.by_name[key]
    suggestions: list[str] = []
    seen: set[str] = set()
    for near in difflib.get_close_matches(key, list(lib.by_name), n=8, cutoff=0.6):
        p = lib.by_name[near]
        if p.id in seen:
            continue
        seen.add(p.id)
        label = lib.spelled[near]
        suggestions.append(repr(label) if label == p.name else f"{label!r} ({p.name})")
        if len(suggestions) == 3:
            break
    if not suggestions:
        raise NightwatchError(
            f"Unknown pigment {name!r}; give an English, Dutch, French, German or Italian pigment name "
            "such as 'lead white', 'smalt' or 'vermilion'."
        )
    listed = (
        suggestions[0] if len(suggestions) == 1 else ", ".join(suggestions[:-1]) + " or " + suggestions[-1]
    )
    raise NightwatchError(f"Unknown pigment {name!r}; did you mean {listed}?")


# ------------------------------------------------------------------ scoring element maps
def match_families(pigment: str | Pigment, families: Iterable[str]) -> dict[str, str | None]:
    """Which available family stands for each characteristic element of a pigment.

    The table's family is preferred; otherwise another family of the same element
    (K before L before M), so a scan fitted with ``Sn-L`` or ``Cd-L`` still works.

    Parameters
    ----------
    pigment
        Name or row.
    families
        Family names that have maps (any accepted spelling; other names are ignored).

    Returns
    -------
    dict
        Table family -> available canonical family, or None when the element has no map.
    """
    p = find_pigment(pigment)
    have: set[str] = set()
    for name in families:
        try:
            have.add(canonical_family(name))
        except NightwatchError:
            continue  # not a family (e.g. "chi2"): has no say here
    out: dict[str, str | None] = {}
    for el in p.elements:
        choice = None
        for shell in (el.family.split("-")[1], "K", "L", "M"):
            cand = f"{el.element}-{shell}"
            if cand in have:
                choice = cand
                break
        out[el.family] = choice
    return out


def _diagnostic_elements() -> frozenset[str]:
    """Elements that define some XRF-visible pigment (required somewhere in the library)."""
    return frozenset(e.element for p in pigment_library() for e in p.elements if e.required)


def _unit_map(values: np.ndarray, normalisation: str, stats: MapStats | None) -> np.ndarray:
    """A map scaled to [0, 1] (NaN kept) by the chosen normalisation."""
    v = np.asarray(values, dtype=np.float64)
    if normalisation == "robust":
        scaled = normalised_map(v, stats if stats is not None else map_stats(v), "fraction")
    elif normalisation == "max":
        finite = v[np.isfinite(v)]
        top = float(finite.max()) if finite.size else 0.0
        scaled = v / top if top > 0 else np.where(np.isfinite(v), 0.0, np.nan)
    else:
        scaled = v
    return np.clip(scaled, 0.0, 1.0)


def _excess(values: np.ndarray, stats: MapStats | None) -> np.ndarray:
    """How far a map rises above its noise floor, 0 at median + 3 robust sd, 1 at its robust max.

    Scaling by the robust maximum alone would turn a map of pure noise (an element
    absent from the painting) into values near 1 everywhere; the floor keeps such maps
    from penalising anything.
    """
    v = np.asarray(values, dtype=np.float64)
    st = stats if stats is not None else map_stats(v)
    floor = st.median + _NOISE_SIGMAS * st.robust_sd
    if st.robust_max <= floor:
        return np.zeros(v.shape, np.float64)
    return np.clip((v - floor) / (st.robust_max - floor), 0.0, 1.0)


def pigment_score(
    maps: Mapping[str, np.ndarray],
    pigment: str | Pigment,
    normalisation: str = "robust",
    *,
    exclusive: float = 0.0,
    stats: Mapping[str, MapStats] | None = None,
) -> np.ndarray:
    """Per-pixel (or per-tile) score in [0, 1] of how well element maps match a pigment.

    Each map is scaled to [0, 1] (``normalisation``). The score is a weighted
    geometric mean over the pigment's characteristic elements: a required element
    contributes its scaled value ``v`` (so its absence vetoes the pigment), a
    supporting element ``0.5 + 0.5 v`` (it helps but never vetoes; skipped when it
    has no map), each raised to its share of the total weight. Indicator traces are
    not scored.

    Parameters
    ----------
    maps
        Element maps by family name, all of one shape (pixels or one value per tile);
        keys that are not families are ignored. Another family of the same element
        stands in for a missing one (see :func:`match_families`).
    pigment
        Name, synonym or row (see :func:`find_pigment`).
    normalisation
        ``"robust"``: divide by the map's 99.5th percentile of finite values (from
        ``stats`` when given); ``"max"``: by its maximum; ``"none"``: the maps are
        already fractions in [0, 1].
    exclusive
        In [0, 1]: how much a significant signal of an element the pigment lacks lowers
        the score, as ``score * (1 - exclusive * e)``. ``e`` is the largest *excess*
        among maps of elements that define some other pigment: a map's value above its
        noise floor (median + 3 robust standard deviations) as a fraction of the way
        from that floor to its robust maximum, clipped to [0, 1]; a map with no
        structure above its floor never penalises. So Pb+Sn lead-tin yellow no longer
        reads as lead white. 0 (default) scores presence only, which keeps mixtures.
    stats
        Optional robust scales by family (:func:`.composition.map_stats`), e.g. of the
        whole painting when ``maps`` hold tiles of part of it.

    Returns
    -------
    numpy.ndarray of float64
        Same shape as the maps; NaN where a map the score reads is not finite.

    Raises
    ------
    NightwatchError
        When the pigment is not XRF-visible, a required element has no map (the
        sentence names the missing and the available families), the maps differ in
        shape, or ``normalisation``/``exclusive`` is out of range.
    """
    p = find_pigment(pigment)
    if not p.xrf_visible:
        raise NightwatchError(
            f"{p.name} cannot be found in element maps because none of its elements is visible to XRF; "
            "search for it with a text or exemplar query instead."
        )
    if normalisation not in ("robust", "max", "none"):
        raise NightwatchError(f"Normalisation {normalisation!r} is not one of 'robust', 'max' or 'none'.")
    if not (isinstance(exclusive, int | float) and 0.0 <= exclusive <= 1.0):
        raise NightwatchError(f"exclusive={exclusive!r} must be a number from 0 to 1.")
    available = canonical_maps(maps)
    chosen = match_families(p, available)
    missing = [e.family for e in p.elements if e.required and chosen[e.family] is None]
    if missing:
        have = ", ".join(sorted(available)) or "none"
        raise NightwatchError(
            f"Scoring {p.name} needs element maps for {' and '.join(missing)} (or another line family of the "
            f"same element), but the maps available are: {have}."
        )
    used = [(e, chosen[e.family]) for e in p.elements if chosen[e.family] is not None]
    shapes = {fam: available[fam].shape for _, fam in used}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{f} {s}" for f, s in shapes.items())
        raise NightwatchError(
            f"The element maps for {p.name} differ in shape ({desc}); give maps on one grid."
        )
    scales = {} if stats is None else {canonical_family(k): v for k, v in stats.items()}
    total = sum(e.weight for e, _ in used)
    score = np.ones(next(iter(shapes.values())), np.float64)
    for el, fam in used:
        v = _unit_map(available[fam], normalisation, scales.get(fam))
        factor = v if el.required else 0.5 + 0.5 * v
        score *= factor ** (el.weight / total)
    if exclusive > 0:
        own = p.element_symbols | p.indicator_symbols
        others = [
            f for f in available if f.split("-")[0] not in own and f.split("-")[0] in _diagnostic_elements()
        ]
        strongest = np.zeros(score.shape, np.float64)
        for fam in others:
            if available[fam].shape != score.shape:
                continue  # a map on another grid cannot penalise these pixels
            strongest = np.fmax(strongest, _excess(available[fam], scales.get(fam)))
        score *= 1.0 - exclusive * strongest
    return np.clip(score, 0.0, 1.0)


# ------------------------------------------------------------------ reading a composition
class PigmentMatch(NamedTuple):
    """One pigment's reading of a fitted composition."""

    pigment: Pigment
    score: float
    explained: tuple[str, ...]


@dataclass(frozen=True)
class CompositionReading:
    """Pigments that explain a fitted composition, best first.

    Iterating, indexing and ``len`` act on :attr:`matches`.

    Attributes
    ----------
    matches
        Ranked single pigments with their score in [0, 1] and the present families
        each explains.
    present
        Families judged present (above the detection threshold).
    absent
        Families that were fitted but are not significantly present.
    unexplained
        Present families that no pigment in :attr:`matches` explains.
    mixture
        A small set of pigments that together explain the present families, chosen
        greedily from :attr:`matches` (e.g. vermilion + lead white).
    """

    matches: tuple[PigmentMatch, ...]
    present: tuple[str, ...]
    absent: tuple[str, ...]
    unexplained: tuple[str, ...]
    mixture: tuple[Pigment, ...]

    def __iter__(self) -> Iterator[PigmentMatch]:
        return iter(self.matches)

    def __len__(self) -> int:
        return len(self.matches)

    def __getitem__(self, index: int) -> PigmentMatch:
        return self.matches[index]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for ``--json`` output and the spectrum viewer."""
        return {
            "matches": [
                {
                    "pigment": m.pigment.name,
                    "id": m.pigment.id,
                    "score": m.score,
                    "explained": list(m.explained),
                }
                for m in self.matches
            ],
            "present": list(self.present),
            "absent": list(self.absent),
            "unexplained": list(self.unexplained),
            "mixture": [p.name for p in self.mixture],
        }


def _canonical_values(values: Mapping[str, float] | None, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (values or {}).items():
        try:
            fam = canonical_family(key)
        except NightwatchError:
            continue  # e.g. "continuum" or "scatter" beside the families
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise NightwatchError(f"The {what} of {key!r} is {value!r}, not a number.") from None
        if math.isfinite(v):
            out[fam] = v
    return out


def read_composition(
    areas: Mapping[str, float],
    uncertainty: Mapping[str, float] | None = None,
    top: int | None = 5,
    *,
    sigma: float = 3.0,
    min_fraction: float = 0.01,
    ignore: Iterable[str] = ("Ar",),
) -> CompositionReading:
    """Rank the pigments whose elements explain a fitted composition (e.g. one spectrum).

    A family is *present* when its area exceeds ``sigma`` times its uncertainty, or,
    without an uncertainty, ``min_fraction`` of the largest area. Each XRF-visible
    pigment scores ``match * (0.5 + 0.5 * explain) * 0.1 ** n`` where ``match`` is the
    weighted share of its characteristic elements that are present (a required element
    whose families were not fitted counts half; an unfitted supporting one is left
    out), ``explain`` the share of present families it explains (1 per characteristic
    element, 0.5 per indicator trace) and ``n`` the number of its required elements
    that were fitted and found absent. Ties go to the longer-used pigment, then table
    order. Mixtures are read as single pigments; :attr:`CompositionReading.mixture`
    and :attr:`CompositionReading.unexplained` show what one pigment leaves over.

    Parameters
    ----------
    areas
        Fitted area (counts) per family name; keys that are not families are ignored.
    uncertainty
        One-sigma uncertainty of each area, when the fit gives it.
    top
        How many pigments with a score above 0 to return; None returns every
        XRF-visible pigment, zeros included.
    sigma
        Detection threshold in uncertainties.
    min_fraction
        Detection threshold, as a fraction of the largest area, for families without an
        uncertainty.
    ignore
        Elements that come from the instrument or the air, not the paint (argon).

    Returns
    -------
    CompositionReading
        Empty matches when nothing is present.
    """
    values = _canonical_values(areas, "area")
    errors = _canonical_values(uncertainty, "uncertainty")
    skip = {str(s).strip().capitalize() for s in ignore}
    values = {f: v for f, v in values.items() if f.split("-")[0] not in skip}
    largest = max((v for v in values.values() if v > 0), default=0.0)
    present, absent = [], []
    for fam, v in values.items():
        err = errors.get(fam, 0.0)
        hit = v > sigma * err if err > 0 else (v > 0 and v > min_fraction * largest)
        (present if hit else absent).append(fam)
    present_el = {f.split("-")[0] for f in present}
    fitted_el = {f.split("-")[0] for f in values}
    if not present:
        return CompositionReading((), (), tuple(sorted(absent)), (), ())

    ranked: list[tuple[float, int, int, PigmentMatch, int]] = []
    for index, p in enumerate(pigment_library()):
        if not p.xrf_visible:
            continue
        got = weight = 0.0
        n_absent = 0
        for el in p.elements:
            if el.element in present_el:
                got += el.weight
                weight += el.weight
            elif el.element in fitted_el:
                weight += el.weight
                n_absent += el.required
            elif el.required:
                got += _UNKNOWN_PRESENCE * el.weight
                weight += el.weight
        match = got / weight if weight > 0 else 0.0
        explained, credit = [], 0.0
        for fam in present:
            sym = fam.split("-")[0]
            if sym in p.element_symbols:
                credit += 1.0
                explained.append(fam)
            elif sym in p.indicator_symbols:
                credit += _INDICATOR_CREDIT
                explained.append(fam)
        explain = credit / len(present)
        score = match * (0.5 + 0.5 * explain) * _ABSENT_REQUIRED_FACTOR**n_absent
        ranked.append(
            (-score, p.first_use, index, PigmentMatch(p, float(score), tuple(sorted(explained))), n_absent)
        )
    ranked.sort(key=lambda r: r[:3])
    if top is None:
        chosen = ranked
    else:
        chosen = [r for r in ranked if r[3].score > 0][: max(int(top), 0)]
    matches = tuple(r[3] for r in chosen)
    covered = {f for m in matches for f in m.explained}
    unexplained = tuple(sorted(f for f in present if f not in covered))

    # greedy cover: add the pigment explaining most still-unexplained families, best score first
    mixture: list[Pigment] = []
    left = set(present)
    candidates = [r[3] for r in chosen if r[3].score > 0 and r[4] == 0]
    while left and candidates:
        gain, best = max(((len(left & set(m.explained)), m) for m in candidates), key=lambda t: t[0])
        if gain == 0:
            break
        mixture.append(best.pigment)
        left -= set(best.explained)
        candidates.remove(best)
    return CompositionReading(
        matches, tuple(sorted(present)), tuple(sorted(absent)), unexplained, tuple(mixture)
    )
