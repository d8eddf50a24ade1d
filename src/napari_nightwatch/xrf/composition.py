"""Composition filters over element maps, e.g. ``"Co-K > 0.3 and As-K > 0.2 and Pb-L < 0.5"``.

This module owns the small filter language behind ``search --where`` and the
composition box of the Search panel, and the normalisation of element maps that
filters (and :mod:`.pigments`) compare against:

* a bare family (``Co-K``) stands for the map as a fraction of its robust maximum,
  the 99.5th percentile of its finite values (so 1.0 is "as strong as this element
  gets on this painting", and values may exceed 1);
* ``z(Co-K)`` is the robust z-score of the map, ``(value - median) / (1.4826 MAD)``.

The text is tokenised and parsed by hand (recursive descent) into a tree of
comparisons joined by ``and``, ``or`` and ``not``; it is never evaluated as Python,
so a filter cannot run code. Grammar, loosest binding first::

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := operand op operand (op operand)*     # 0.2 < Co-K < 0.5 is a chain
    operand    := family | "z(" family ")" | ["-"] number
    op         := "<" | "<=" | ">" | ">="

Keywords are case-insensitive; families are any spelling :func:`.lines.get_family`
accepts (``Co-K``, ``co-k``, ``CoK``). Every problem is one :class:`NightwatchError`
sentence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ..core.errors import NightwatchError
from .lines import get_family

__all__ = [
    "And",
    "Comparison",
    "Expression",
    "MapStats",
    "MapValue",
    "Not",
    "Number",
    "Or",
    "canonical_family",
    "canonical_maps",
    "evaluate",
    "map_stats",
    "margin",
    "normalised_map",
    "parse_where",
]

#: percentile of a map's finite values taken as its robust maximum
ROBUST_PERCENTILE = 99.5
# 1.4826 * MAD estimates the standard deviation of normally distributed values
_MAD_TO_SD = 1.4826
# sqrt(pi/2) * mean absolute deviation estimates it too, and is not zero for sparse maps
_MEANDEV_TO_SD = math.sqrt(math.pi / 2.0)
# excitation used only to validate family names: high enough that every K/L/M family of
# Na..U that a painting scanner could report is accepted, whatever tube the scan used
_NAME_CHECK_KEV = 120.0

_OPS = ("<", "<=", ">", ">=")


# ------------------------------------------------------------------ map normalisation
@dataclass(frozen=True)
class MapStats:
    """Robust scale of one element map.

    Attributes
    ----------
    robust_max
        99.5th percentile of the finite values (0 when there are none).
    median
        Median of the finite values.
    robust_sd
        Robust standard deviation: ``1.4826 * MAD``; where the MAD is 0 (a map that is
        zero almost everywhere) ``sqrt(pi/2)`` times the mean absolute deviation from
        the median, then the plain standard deviation; 0 only for a constant map.
    """

    robust_max: float
    median: float
    robust_sd: float


def map_stats(values: np.ndarray, percentile: float = ROBUST_PERCENTILE) -> MapStats:
    """Robust maximum, median and standard deviation of an element map.

    Parameters
    ----------
    values
        The map (any shape: pixels, or one value per tile); NaN and inf are ignored.
    percentile
        Percentile taken as the robust maximum.

    Returns
    -------
    MapStats
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return MapStats(0.0, 0.0, 0.0)
    med = float(np.median(v))
    dev = np.abs(v - med)
    sd = _MAD_TO_SD * float(np.median(dev))
    if sd <= 0:
        sd = _MEANDEV_TO_SD * float(dev.mean())
    if sd <= 0:
        sd = float(v.std())
    return MapStats(float(np.percentile(v, percentile)), med, sd)


def normalised_map(values: np.ndarray, stats: MapStats, kind: str = "fraction") -> np.ndarray:
    """A map as a fraction of its robust maximum (``"fraction"``) or as robust z-scores (``"z"``).

    A scale of 0 (an empty or constant map) gives 0 wherever the map is finite; NaN
    stays NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    if kind == "fraction":
        scale, offset = stats.robust_max, 0.0
    elif kind == "z":
        scale, offset = stats.robust_sd, stats.median
    else:
        raise NightwatchError(f"Map normalisation {kind!r} is not one of 'fraction' or 'z'.")
    if scale > 0:
        return (v - offset) / scale
    return np.where(np.isfinite(v), 0.0, np.nan)


def canonical_family(name: str) -> str:
    """The package's spelling of a line family name (``"co-k"`` -> ``"Co-K"``).

    Raises
    ------
    NightwatchError
        When ``name`` is not ``<element>-<K|L|M>`` for an element from Na to U.
    """
    try:
        return get_family(str(name), _NAME_CHECK_KEV).name
    except NightwatchError:
        raise NightwatchError(
            f"{str(name)!r} is not an XRF line family; expected <element>-<K|L|M> with an element "
            "from Na to U, e.g. 'Co-K' or 'Pb-L'."
        ) from None


def canonical_maps(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Element maps keyed by canonical family name; keys that are not families are left out.

    Raises
    ------
    NightwatchError
        When two keys name the same family (``"Pb-L"`` and ``"pb-l"``).
    """
    out: dict[str, np.ndarray] = {}
    spelled: dict[str, str] = {}
    for key, value in maps.items():
        try:
            fam = canonical_family(key)
        except NightwatchError:
            continue  # e.g. "chi2" next to the maps: not an element map
        if fam in out:
            raise NightwatchError(
                f"The element maps hold {fam} twice, as {spelled[fam]!r} and {key!r}; keep one of them."
            )
        out[fam] = np.asarray(value)
        spelled[fam] = str(key)
    return out


# ------------------------------------------------------------------ expression tree
class Expression:
    """A parsed composition filter (a tree of comparisons joined by and/or/not).

    ``str(expr)`` gives the canonical text with explicit parentheses, which is a
    good layer name; :attr:`families` lists the element maps it needs.
    """

    def _children(self) -> tuple[Expression, ...]:
        return ()

    def _operands(self) -> Iterator[Number | MapValue]:
        for child in self._children():
            yield from child._operands()

    @property
    def families(self) -> tuple[str, ...]:
        """Canonical names of the families the filter reads, sorted, without repeats."""
        return tuple(sorted({op.family for op in self._operands() if isinstance(op, MapValue)}))

    def evaluate(
        self, maps: Mapping[str, np.ndarray], stats: Mapping[str, MapStats] | None = None
    ) -> np.ndarray:
        """Same as :func:`evaluate` ``(self, maps, stats=stats)``."""
        return evaluate(self, maps, stats=stats)

    def margin(
        self, maps: Mapping[str, np.ndarray], stats: Mapping[str, MapStats] | None = None
    ) -> np.ndarray:
        """Same as :func:`margin` ``(self, maps, stats=stats)``."""
        return margin(self, maps, stats=stats)

    # evaluation on prepared, normalised values; overridden by every node type
    def _truth(self, values: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _margin(self, values: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Number:
    """A constant in a comparison."""

    value: float

    def __str__(self) -> str:
        return f"{self.value:g}"


@dataclass(frozen=True)
class MapValue:
    """An element map, as a fraction of its robust maximum or as a robust z-score.

    Attributes
    ----------
    family
        Canonical family name (``"Co-K"``).
    kind
        ``"fraction"`` or ``"z"``.
    """

    family: str
    kind: str = "fraction"

    def __str__(self) -> str:
        return self.family if self.kind == "fraction" else f"z({self.family})"


Operand = Number | MapValue


def _operand_values(op: Operand, values: Mapping[tuple[str, str], np.ndarray]) -> np.ndarray | float:
    if isinstance(op, Number):
        return op.value
    return values[(op.family, op.kind)]


@dataclass(frozen=True)
class Comparison(Expression):
    """``left op right`` with ``op`` one of ``<``, ``<=``, ``>``, ``>=``."""

    left: Operand
    op: str
    right: Operand

    def _operands(self) -> Iterator[Operand]:
        yield self.left
        yield self.right

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"

    def _truth(self, values):
        a, b = _operand_values(self.left, values), _operand_values(self.right, values)
        with np.errstate(invalid="ignore"):
            if self.op == "<":
                return np.less(a, b)
            if self.op == "<=":
                return np.less_equal(a, b)
            if self.op == ">":
                return np.greater(a, b)
            return np.greater_equal(a, b)

    def _margin(self, values):
        a, b = _operand_values(self.left, values), _operand_values(self.right, values)
        return np.subtract(b, a) if self.op in ("<", "<=") else np.subtract(a, b)


@dataclass(frozen=True)
class And(Expression):
    """All parts hold; the margin is the smallest part margin."""

    parts: tuple[Expression, ...]

    def _children(self):
        return self.parts

    def __str__(self) -> str:
        return "(" + " and ".join(str(p) for p in self.parts) + ")"

    def _truth(self, values):
        out = self.parts[0]._truth(values)
        for p in self.parts[1:]:
            out = np.logical_and(out, p._truth(values))
        return out

    def _margin(self, values):
        out = self.parts[0]._margin(values)
        for p in self.parts[1:]:
            out = np.minimum(out, p._margin(values))
        return out


@dataclass(frozen=True)
class Or(Expression):
    """Any part holds; the margin is the largest part margin."""

    parts: tuple[Expression, ...]

    def _children(self):
        return self.parts

    def __str__(self) -> str:
        return "(" + " or ".join(str(p) for p in self.parts) + ")"

    def _truth(self, values):
        out = self.parts[0]._truth(values)
        for p in self.parts[1:]:
            out = np.logical_or(out, p._truth(values))
        return out

    def _margin(self, values):
        out = self.parts[0]._margin(values)
        for p in self.parts[1:]:
            out = np.maximum(out, p._margin(values))
        return out


@dataclass(frozen=True)
class Not(Expression):
    """The part does not hold; the margin is the part's margin negated."""

    part: Expression

    def _children(self):
        return (self.part,)

    def __str__(self) -> str:
        return f"not {self.part}"

    def _truth(self, values):
        return np.logical_not(self.part._truth(values))

    def _margin(self, values):
        return np.negative(self.part._margin(values))


# ------------------------------------------------------------------ tokenizer
@dataclass(frozen=True)
class _Token:
    kind: str  # NUM FAM KW Z LP RP OP MINUS ARITH EOF
    text: str
    pos: int
    value: float | str | None = None


_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*")
_KEYWORDS = ("and", "or", "not")
_NOT_FINITE = ("nan", "inf", "infinity")
_SPELLED_OUT = {"&": "and", "&&": "and", "|": "or", "||": "or", "!": "not"}


class _Reader:
    """Tokenizer and recursive-descent parser for one filter text."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = self._tokenize()
        self.i = 0

    # errors -----------------------------------------------------------
    def fail(self, problem: str, pos: int | None = None) -> NightwatchError:
        where = "" if pos is None else f" at character {pos + 1}"
        return NightwatchError(f"Cannot read the composition filter {self.text!r}{where}: {problem}.")

    # tokens -----------------------------------------------------------
    def _tokenize(self) -> list[_Token]:
        s, i, out = self.text, 0, []
        while i < len(s):
            c = s[i]
            if c.isspace():
                i += 1
                continue
            if c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
                m = _NUMBER.match(s, i)
                end = m.end()
                if end < len(s) and (s[end].isalnum() or s[end] in "._"):
                    bad = re.match(r"[\w.]+", s[i:]).group(0)
                    raise self.fail(f"{bad!r} is not a number", i)
                value = float(m.group(0))
                if not math.isfinite(value):
                    raise self.fail(f"{m.group(0)!r} is not a finite number", i)
                out.append(_Token("NUM", m.group(0), i, value))
                i = end
                continue
            if c.isalpha():
                m = _WORD.match(s, i)
                word = m.group(0) if m else c
                low = word.lower()
                if low in _KEYWORDS:
                    out.append(_Token("KW", low, i))
                elif low == "z":
                    out.append(_Token("Z", word, i))
                elif low in _NOT_FINITE:
                    raise self.fail(f"{word!r} is not a finite number; use values like 0.3 or 2", i)
                else:
                    try:
                        fam = canonical_family(word)
                    except NightwatchError:
                        raise self.fail(
                            f"{word!r} is not an XRF line family like 'Co-K' or 'Pb-L' (element from Na to U)",
                            i,
                        ) from None
                    out.append(_Token("FAM", word, i, fam))
                i += len(word)
                continue
            two = s[i : i + 2]
            if two in ("<=", ">="):
                out.append(_Token("OP", two, i))
                i += 2
                continue
            if two in ("==", "!=", "=<", "=>"):
                raise self.fail(f"{two!r} is not supported; compare with <, <=, > or >=", i)
            if two in _SPELLED_OUT:
                raise self.fail(f"{two!r} is not supported; write '{_SPELLED_OUT[two]}'", i)
            if c in "<>":
                out.append(_Token("OP", c, i))
            elif c == "=":
                raise self.fail("'=' is not supported; compare with <, <=, > or >=", i)
            elif c in _SPELLED_OUT:
                raise self.fail(f"{c!r} is not supported; write '{_SPELLED_OUT[c]}'", i)
            elif c == "(":
                out.append(_Token("LP", c, i))
            elif c == ")":
                out.append(_Token("RP", c, i))
            elif c == "-":
                out.append(_Token("MINUS", c, i))
            elif c in "+*/%^":
                out.append(_Token("ARITH", c, i))
            else:
                raise self.fail(f"the character {c!r} is not allowed", i)
            i += 1
        out.append(_Token("EOF", "", len(s)))
        return out

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def describe(self, tok: _Token) -> str:
        return "the end of the filter" if tok.kind == "EOF" else repr(tok.text)

    # grammar ----------------------------------------------------------
    def parse(self) -> Expression:
        expr = self.or_expr()
        tok = self.peek()
        if tok.kind != "EOF":
            if tok.kind == "RP":
                raise self.fail("')' has no matching '('", tok.pos)
            if tok.kind in ("FAM", "NUM", "Z", "LP", "MINUS"):
                raise self.fail(f"'and' or 'or' is missing before {tok.text!r}", tok.pos)
            raise self.fail(f"{tok.text!r} is unexpected after a complete condition", tok.pos)
        return expr

    def or_expr(self) -> Expression:
        parts = [self.and_expr()]
        while self.peek().kind == "KW" and self.peek().text == "or":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Expression:
        parts = [self.not_expr()]
        while self.peek().kind == "KW" and self.peek().text == "and":
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self) -> Expression:
        tok = self.peek()
        if tok.kind == "KW" and tok.text == "not":
            self.take()
            return Not(self.not_expr())
        if tok.kind == "LP":
            self.take()
            inner = self.or_expr()
            close = self.peek()
            if close.kind != "RP":
                raise self.fail(
                    f"'(' at character {tok.pos + 1} is never closed; {self.describe(close)} "
                    "came instead of ')'",
                    close.pos,
                )
            self.take()
            return inner
        return self.comparison()

    def comparison(self) -> Expression:
        first = self.peek()
        if first.kind == "EOF" or first.kind == "KW" or first.kind == "RP":
            after = self.tokens[self.i - 1].text if self.i > 0 else None
            what = f"after {after!r}" if after else "here"
            raise self.fail(
                f"a comparison such as 'Co-K > 0.3' is expected {what}, not {self.describe(first)}", first.pos
            )
        operands = [self.operand()]
        ops: list[str] = []
        while self.peek().kind == "OP":
            ops.append(self.take().text)
            operands.append(self.operand())
        if not ops:
            nxt = self.peek()
            if nxt.kind in ("ARITH", "MINUS"):
                raise self.fail(
                    f"{str(operands[0])!r} {nxt.text} ... is arithmetic, not a comparison; filters "
                    "compare a map with a number, e.g. 'Co-K > 0.3'",
                    nxt.pos,
                )
            raise self.fail(
                f"{str(operands[0])!r} alone is not a comparison; write e.g. '{operands[0]} > 0.3'", first.pos
            )
        parts = []
        for k, op in enumerate(ops):
            left, right = operands[k], operands[k + 1]
            if isinstance(left, Number) and isinstance(right, Number):
                raise self.fail(
                    f"'{left} {op} {right}' compares two numbers; one side must be an element map", first.pos
                )
            parts.append(Comparison(left, op, right))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def operand(self) -> Operand:
        tok = self.take()
        if tok.kind == "NUM":
            return Number(float(tok.value))
        if tok.kind == "MINUS" and self.peek().kind == "NUM":
            return Number(-float(self.take().value))
        if tok.kind == "FAM":
            return MapValue(str(tok.value), "fraction")
        if tok.kind == "Z":
            lp = self.take()
            fam = self.take() if lp.kind == "LP" else lp
            rp = self.take() if fam.kind == "FAM" else fam
            if lp.kind != "LP" or fam.kind != "FAM" or rp.kind != "RP":
                raise self.fail("z() takes exactly one line family, e.g. 'z(Co-K) > 2'", tok.pos)
            return MapValue(str(fam.value), "z")
        raise self.fail(
            f"a line family, z(family) or a number is expected, not {self.describe(tok)}", tok.pos
        )


def parse_where(text: str) -> Expression:
    """Parse a composition filter such as ``"Co-K > 0.3 and not (Pb-L > 0.5 or z(Hg-L) > 2)"``.

    Parameters
    ----------
    text
        The filter; see the module docstring for the grammar. ``not`` binds tighter
        than ``and``, which binds tighter than ``or``; ``0.2 < Co-K < 0.5`` is a chain.

    Returns
    -------
    Expression
        The parsed tree; ``.families`` lists the element maps it needs and
        ``str()`` gives its canonical text.

    Raises
    ------
    NightwatchError
        One sentence for an empty filter, something that is not a comparison, an
        unknown family, a malformed or non-finite number, unbalanced parentheses,
        unsupported operators or trailing text.
    """
    if not isinstance(text, str):
        raise NightwatchError(
            f"The composition filter must be text such as 'Co-K > 0.3', not {type(text).__name__}."
        )
    if not text.strip():
        raise NightwatchError("The composition filter is empty; write a condition such as 'Co-K > 0.3'.")
    return _Reader(text).parse()


# ------------------------------------------------------------------ evaluation
def _prepare(
    expr: Expression, maps: Mapping[str, np.ndarray], stats: Mapping[str, MapStats] | None
) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray]:
    """Normalised values of every (family, kind) the filter reads, and where all of them are finite."""
    if not isinstance(expr, Expression):
        raise NightwatchError(
            f"Expected a parsed composition filter (from parse_where), not {type(expr).__name__}."
        )
    available = canonical_maps(maps)
    missing = [f for f in expr.families if f not in available]
    if missing:
        have = ", ".join(sorted(available)) or "none"
        raise NightwatchError(
            f"The composition filter {str(expr)!r} needs an element map for {', '.join(missing)}, "
            f"but the maps available are: {have}."
        )
    shapes = {f: available[f].shape for f in expr.families}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{f} {s}" for f, s in shapes.items())
        raise NightwatchError(
            f"The element maps of the composition filter differ in shape ({desc}); give maps on one grid."
        )
    stats = {} if stats is None else {canonical_family(k): v for k, v in stats.items()}
    values: dict[tuple[str, str], np.ndarray] = {}
    finite = np.ones(next(iter(shapes.values())), bool)
    for op in expr._operands():
        if not isinstance(op, MapValue) or (op.family, op.kind) in values:
            continue
        arr = np.asarray(available[op.family], dtype=np.float64)
        st = stats.get(op.family)
        if st is None:
            st = stats[op.family] = map_stats(arr)
        values[(op.family, op.kind)] = normalised_map(arr, st, op.kind)
        finite &= np.isfinite(arr)
    return values, finite


def evaluate(
    expr: Expression, maps: Mapping[str, np.ndarray], *, stats: Mapping[str, MapStats] | None = None
) -> np.ndarray:
    """Where a composition filter holds.

    Parameters
    ----------
    expr
        A filter from :func:`parse_where`.
    maps
        Element maps by family name (any spelling :func:`canonical_family` accepts),
        all of one shape: pixel maps ``(y, x)`` or one value per tile. Keys that are
        not families are ignored.
    stats
        Optional robust scales by family (from :func:`map_stats`), e.g. computed on the
        whole painting when ``maps`` hold only part of it; missing families are
        computed from ``maps``.

    Returns
    -------
    numpy.ndarray of bool
        Same shape as the maps; False wherever a map the filter reads is NaN or inf
        (no measurement), whatever ``not`` says.

    Raises
    ------
    NightwatchError
        When a family the filter needs has no map (the sentence names the available
        ones) or the maps differ in shape.
    """
    values, finite = _prepare(expr, maps, stats)
    return np.logical_and(np.broadcast_to(expr._truth(values), finite.shape), finite)


def margin(
    expr: Expression, maps: Mapping[str, np.ndarray], *, stats: Mapping[str, MapStats] | None = None
) -> np.ndarray:
    """How far inside the filter each pixel is, for ranking the pixels that pass.

    A comparison ``a > b`` has margin ``a - b`` (``b - a`` for ``<``), in the units of
    its operands (fractions of the robust max, or z-scores); ``and`` takes the
    minimum, ``or`` the maximum, ``not`` the negation. Pixels inside the filter have
    margin > 0 (>= 0 at the boundary of ``<=``/``>=``).

    Parameters
    ----------
    expr, maps, stats
        As for :func:`evaluate`.

    Returns
    -------
    numpy.ndarray of float64
        Same shape as the maps; NaN wherever a map the filter reads is not finite.
    """
    values, finite = _prepare(expr, maps, stats)
    out = np.array(np.broadcast_to(expr._margin(values), finite.shape), dtype=np.float64)
    out[~finite] = np.nan
    return out
