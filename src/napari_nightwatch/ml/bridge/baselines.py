"""Plain baselines of the XRF bridge, computed on the same tiles and split as the
image-model predictor (issue 13), and the per-element choice among all methods.

- :func:`colour_statistics`: per tile RGB mean, standard deviation and 10/50/90th
  percentiles (15 numbers).
- :func:`texture_descriptors`: rotation-invariant uniform local binary patterns at two
  radii (scikit-image) and structure-tensor statistics of the grey tile.
- :class:`KnnRegressor`: 10 nearest neighbours, inverse-distance weights, on
  standardised features (the colour-statistics baseline).
- :class:`RidgeRegressor`: ridge regression with one penalty per element chosen by
  spatial-block cross-validation on the training tiles (the colour + texture baseline,
  and the "stack" of image-model features with the descriptors).
- :class:`RandomFeatureRidge`: ridge regression on random Fourier features (an RBF
  kernel ridge at a fixed cost per tile), the "kernel" candidate on the stack's
  features and the image-model vectors of each tile's neighbourhood.
- :func:`fit_blend`: non-negative stacking of the methods' out-of-fold predictions.
- :func:`choose_methods`: per element, the method with the best validation r; never
  one that validates worse than the best baseline.

numpy / scipy / scikit-image only: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: methods that are baselines (plain descriptors, no image model)
BASELINES = ("colour_knn", "descriptor_ridge")

#: neighbours of the colour-statistics kNN baseline
KNN_K = 10

#: ridge penalties tried by the block cross-validation (on standardised features)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


# ------------------------------------------------------------------------------- descriptors
def colour_statistics(tiles: np.ndarray) -> np.ndarray:
    """Per tile RGB mean, standard deviation and 10/50/90th percentiles.

    Parameters
    ----------
    tiles
        ``(n, t, t, 3)`` uint8 tiles.

    Returns
    -------
    numpy.ndarray
        ``(n, 15)`` float64 in 0-1 units: mean (3), std (3), p10 (3), p50 (3), p90 (3).
    """
    t = np.asarray(tiles, np.float64).reshape(len(tiles), -1, 3) / 255.0
    if len(t) == 0:
        return np.zeros((0, 15))
    q = np.percentile(t, [10, 50, 90], axis=1)  # (3, n, 3)
    return np.concatenate([t.mean(1), t.std(1), q[0], q[1], q[2]], axis=1)


def texture_descriptors(tiles: np.ndarray) -> np.ndarray:
    """Texture of each tile's grey image: LBP histograms and structure-tensor statistics.

    Local binary patterns (``skimage.feature.local_binary_pattern``, rotation-invariant
    uniform, 8 neighbours at radius 1 and 2) give the share of flat, edge, corner and
    spot pixels, i.e. how grainy or streaky the paint is at the scale of a particle;
    the structure tensor (``skimage.feature.structure_tensor``) adds the mean gradient
    energy, its spread, and the coherence (how much the texture has one direction, as
    brushwork or flakes along the brush have).

    Returns
    -------
    numpy.ndarray
        ``(n, 26)`` float64: 10 + 10 LBP bin fractions, log mean gradient energy, its
        coefficient of variation, mean local coherence, mean absolute Laplacian, grey
        std, and the coherence of the tile's mean tensor (one direction over the tile).
    """
    from scipy.ndimage import gaussian_filter, laplace
    from skimage.feature import local_binary_pattern, structure_tensor

    n = len(tiles)
    out = np.zeros((n, 26))
    grey = np.asarray(tiles, np.float64).mean(-1) / 255.0
    for i in range(n):
        g = grey[i]
        col = 0
        for radius in (1, 2):
            # quantised to 8 bits first: LBP compares neighbours, and float noise would flip ties
            lbp = local_binary_pattern(np.round(g * 255).astype(np.uint8), 8, radius, method="uniform")
            out[i, col : col + 10] = np.bincount(lbp.astype(np.int64).ravel(), minlength=10)[:10] / lbp.size
            col += 10
        arr, arc, acc = structure_tensor(g, sigma=1.0, order="rc")
        energy = arr + acc
        coherence = np.sqrt((arr - acc) ** 2 + 4 * arc**2) / np.maximum(energy, 1e-12)
        out[i, 20] = np.log(energy.mean() + 1e-8)
        out[i, 21] = energy.std() / max(energy.mean(), 1e-12)
        out[i, 22] = coherence.mean()
        out[i, 23] = np.abs(laplace(gaussian_filter(g, 0.7))).mean()
        out[i, 24] = g.std()
        m_rr, m_rc, m_cc = arr.mean(), arc.mean(), acc.mean()
        out[i, 25] = np.sqrt((m_rr - m_cc) ** 2 + 4 * m_rc**2) / max(m_rr + m_cc, 1e-12)
    return out


#: windows around a tile (in tiles) whose colour and texture the "stack" also sees: a
#: tile's surroundings carry what one small tile cannot (a ground layer under several
#: tiles, enough particles to tell their shapes apart); the plain baselines keep to the tile
CONTEXT_SCALES = (3, 5)

#: grid radii (in tiles) of the neighbourhoods whose mean image-model vector the "kernel"
#: candidate also sees (:func:`~napari_nightwatch.ml.embed.context_vectors`)
VECTOR_CONTEXT_RADII = (1, 2)

#: the colour-statistics columns of one context scale (its first 15 of 41)
_COLOUR = 15
_PER_SCALE = 41


@dataclass
class TileDescriptors:
    """Colour statistics and texture descriptors of a set of tiles (and of their surroundings)."""

    colour: np.ndarray
    texture: np.ndarray
    context: np.ndarray | None = None
    #: mean image-model vectors of the tiles' neighbourhoods (:data:`VECTOR_CONTEXT_RADII`, side by side)
    vector_context: np.ndarray | None = None

    @property
    def both(self) -> np.ndarray:
        return np.concatenate([self.colour, self.texture], axis=1)

    @property
    def context_colour(self) -> np.ndarray:
        """Colour statistics of the tile and of each context window (the "context_knn" features)."""
        if self.context is None:
            raise ValueError("these descriptors were made without the tiles' surroundings")
        n_scales = self.context.shape[1] // _PER_SCALE
        return np.concatenate([self.colour] + [self.context[:, s * _PER_SCALE : s * _PER_SCALE + _COLOUR]
                                               for s in range(n_scales)], axis=1)

    def take(self, rows) -> TileDescriptors:
        """The descriptors of some of the tiles."""
        ctx = None if self.context is None else self.context[rows]
        vctx = None if self.vector_context is None else self.vector_context[rows]
        return TileDescriptors(self.colour[rows], self.texture[rows], ctx, vctx)

    def kernel_features(self, vectors: np.ndarray) -> np.ndarray:
        """The "kernel" method's features: the stack's, and the neighbourhoods' image-model vectors."""
        if self.context is None or self.vector_context is None:
            raise ValueError("the kernel features need the tiles' surroundings and their neighbours' vectors")
        return np.concatenate([self.stack_features(vectors), self.vector_context], axis=1)

    def stack_features(self, vectors: np.ndarray, n_features: int | None = None) -> np.ndarray:
        """The "stack" method's features: image-model vectors, descriptors, context descriptors.

        ``n_features`` (of a fitted ridge) leaves the context out for models fitted without it.
        """
        parts = [np.asarray(vectors, np.float64), self.both]
        if self.context is not None and (n_features is None or n_features > sum(p.shape[1] for p in parts)):
            parts.append(self.context)
        return np.concatenate(parts, axis=1)


def tile_descriptors(read_tiles, tiles: np.ndarray, batch: int = 512, read_context=()) -> TileDescriptors:
    """Descriptors of tiles read in batches (``read_tiles(index) -> (n, t, t, 3) uint8``).

    ``read_context``: readers of each tile's surroundings (same signature, see
    :func:`~napari_nightwatch.ml.embed.context_reader`); their colour and texture
    descriptors, side by side, are the ``context``.
    """
    tiles = np.asarray(tiles, np.int64)
    colour, texture = [np.zeros((0, 15))], [np.zeros((0, 26))]
    context = [np.zeros((0, 41 * len(read_context)))]
    for s in range(0, tiles.size, batch):
        idx = tiles[s : s + batch]
        px = read_tiles(idx)
        colour.append(colour_statistics(px))
        texture.append(texture_descriptors(px))
        if read_context:
            wins = [r(idx) for r in read_context]
            context.append(np.concatenate([np.concatenate([colour_statistics(w), texture_descriptors(w)], 1)
                                           for w in wins], 1))
    ctx = np.concatenate(context) if read_context else None
    return TileDescriptors(np.concatenate(colour), np.concatenate(texture), ctx)


# ------------------------------------------------------------------------------- regressors
def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(0)
    sd = x.std(0)
    return mu, np.where(sd > 1e-12, sd, 1.0)


class KnnRegressor:
    """k nearest neighbours (inverse-distance weights) on standardised features.

    Also returns the weighted spread of the neighbours' measured values: where tiles
    that look the same differ in composition, the features cannot tell it.
    """

    def __init__(self, k: int = KNN_K) -> None:
        self.k = int(k)

    def fit(self, x: np.ndarray, y: np.ndarray) -> KnnRegressor:
        self.mean_, self.std_ = _standardiser(np.asarray(x, np.float64))
        self.x_ = (np.asarray(x, np.float64) - self.mean_) / self.std_
        self.y_ = np.asarray(y, np.float64)
        return self

    def predict(self, x: np.ndarray, return_spread: bool = False):
        from scipy.spatial import cKDTree

        xs = (np.asarray(x, np.float64) - self.mean_) / self.std_
        k = min(self.k, len(self.x_))
        d, idx = cKDTree(self.x_).query(xs, k=k)
        d, idx = d.reshape(len(xs), k), idx.reshape(len(xs), k)
        # inverse distance; the floor keeps an exact duplicate from taking all the weight
        # with an infinite one (1e-6 of a standard deviation is far below any real difference)
        w = 1.0 / np.maximum(d, 1e-6)
        w /= w.sum(1, keepdims=True)
        nb = self.y_[idx]  # (n, k, c)
        mean = np.einsum("nk,nkc->nc", w, nb)
        if not return_spread:
            return mean
        spread = np.sqrt(np.einsum("nk,nkc->nc", w, (nb - mean[:, None]) ** 2))
        return mean, spread

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"x": self.x_, "y": self.y_, "mean": self.mean_, "std": self.std_, "k": np.array([self.k])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> KnnRegressor:
        m = cls(int(np.asarray(a["k"])[0]))
        m.x_, m.y_ = np.asarray(a["x"], np.float64), np.asarray(a["y"], np.float64)
        m.mean_, m.std_ = np.asarray(a["mean"], np.float64), np.asarray(a["std"], np.float64)
        return m


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas: np.ndarray):
    """Coefficients ``(n_alphas, p, c)`` of centred ridge fits for every penalty, one SVD."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y  # (r, c)
    shrink = s[None, :] / (s[None, :] ** 2 + alphas[:, None])  # (a, r)
    return np.einsum("pr,ar,rc->apc", vt.T, shrink, uty)


def block_folds(blocks: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number per tile: whole spatial blocks go to one fold."""
    ub = np.unique(blocks)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ub.size)
    fold_of = dict(zip(ub[perm].tolist(), (np.arange(ub.size) % max(1, min(n_folds, ub.size))).tolist(), strict=True))
    return np.array([fold_of[b] for b in np.asarray(blocks).tolist()], np.int64)


class RidgeRegressor:
    """Ridge regression on standardised features, one penalty per element.

    The penalty of each element is the one with the least squared error over
    spatial-block cross-validation folds of the training tiles (whole blocks held out,
    so a tile's neighbours do not vouch for it).
    """

    def fit(self, x: np.ndarray, y: np.ndarray, blocks: np.ndarray, alphas=RIDGE_ALPHAS, n_folds: int = 5,
            seed: int = 0) -> RidgeRegressor:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        self.mean_, self.std_ = _standardiser(x)
        xs = (x - self.mean_) / self.std_
        self.y_mean_ = y.mean(0)
        y_sd = np.where(y.std(0) > 1e-12, y.std(0), 1.0)
        a = np.asarray(alphas, np.float64) * len(x) / 100.0  # penalties per 100 tiles: the same choice at any size
        folds = block_folds(blocks, n_folds, seed)
        err = np.zeros((a.size, y.shape[1]))
        for f in np.unique(folds):
            tr, te = folds != f, folds == f
            if tr.sum() < 2 or te.sum() == 0:
                continue
            mx, my = xs[tr].mean(0), y[tr].mean(0)
            coef = _ridge_path(xs[tr] - mx, y[tr] - my, a)
            pred = np.einsum("np,apc->anc", xs[te] - mx, coef) + my
            err += (((pred - y[te]) / y_sd) ** 2).sum(1)
        best = np.argmin(err, axis=0)
        self.alpha_ = a[best]
        coef = _ridge_path(xs - xs.mean(0), y - self.y_mean_, a)
        self.coef_ = np.stack([coef[best[j], :, j] for j in range(y.shape[1])], 1)  # (p, c)
        self.x_mean_ = xs.mean(0)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        xs = (np.asarray(x, np.float64) - self.mean_) / self.std_
        return (xs - self.x_mean_) @ self.coef_ + self.y_mean_

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "std": self.std_, "x_mean": self.x_mean_, "coef": self.coef_,
                "y_mean": self.y_mean_, "alpha": self.alpha_}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> RidgeRegressor:
        m = cls()
        m.mean_, m.std_, m.x_mean_ = (np.asarray(a[k], np.float64) for k in ("mean", "std", "x_mean"))
        m.coef_, m.y_mean_, m.alpha_ = (np.asarray(a[k], np.float64) for k in ("coef", "y_mean", "alpha"))
        return m


#: random Fourier features of the "kernel" candidate, and the RBF kernel's width: gamma
#: per feature of the standardised input, i.e. k(a, b) = exp(-KERNEL_GAMMA * |a - b|^2 / p).
#: Chosen on the miniature and the metamer painting (0.1-1 give the same figures within
#: 0.01 there; 2048 components add nothing over 1024)
KERNEL_COMPONENTS = 1024
KERNEL_GAMMA = 0.3


class RandomFeatureRidge:
    """Ridge regression on random Fourier features of standardised inputs.

    ``cos(x W + b)`` with Gaussian ``W`` approximates an RBF kernel (Rahimi & Recht,
    2007): a smooth non-linear regression whose cost per tile is fixed, unlike an exact
    kernel ridge (quadratic in the training tiles) or the kNN (a tree per query). The
    penalty is chosen per element by spatial-block cross-validation, as for
    :class:`RidgeRegressor`. ``W`` and ``b`` are drawn from ``seed`` and stored with
    the model, so a saved model predicts the same numbers on any machine.
    """

    def __init__(self, n_components: int = KERNEL_COMPONENTS, gamma: float = KERNEL_GAMMA) -> None:
        self.n_components = int(n_components)
        self.gamma = float(gamma)

    def _features(self, x: np.ndarray) -> np.ndarray:
        xs = (np.asarray(x, np.float64) - self.mean_) / self.std_
        return np.cos(xs @ self.w_ + self.b_)

    def fit(self, x: np.ndarray, y: np.ndarray, blocks: np.ndarray, seed: int = 0) -> RandomFeatureRidge:
        x = np.asarray(x, np.float64)
        self.mean_, self.std_ = _standardiser(x)
        rng = np.random.default_rng(seed)
        p = x.shape[1]
        self.w_ = rng.standard_normal((p, self.n_components)) * np.sqrt(2.0 * self.gamma / p)
        self.b_ = rng.uniform(0.0, 2.0 * np.pi, self.n_components)
        self.ridge_ = RidgeRegressor().fit(self._features(x), y, blocks, seed=seed)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.ridge_.predict(self._features(x))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"rff_mean": self.mean_, "rff_std": self.std_, "rff_w": self.w_, "rff_b": self.b_,
                "rff_gamma": np.array([self.gamma]), **self.ridge_.to_arrays()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> RandomFeatureRidge:
        m = cls(int(np.asarray(a["rff_b"]).size), float(np.asarray(a["rff_gamma"])[0]))
        m.mean_, m.std_, m.w_, m.b_ = (np.asarray(a[k], np.float64) for k in ("rff_mean", "rff_std", "rff_w", "rff_b"))
        m.ridge_ = RidgeRegressor.from_arrays(a)
        return m


def regressor_from_arrays(a: dict[str, np.ndarray]):
    """A stored ridge (:class:`RidgeRegressor` or :class:`RandomFeatureRidge`), told apart by its arrays."""
    return RandomFeatureRidge.from_arrays(a) if "rff_w" in a else RidgeRegressor.from_arrays(a)


# ------------------------------------------------------------------------------- stacking
def fit_blend(preds: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative weights and an intercept combining methods' predictions of one element.

    Parameters
    ----------
    preds
        ``(n, m)`` out-of-fold predictions of ``m`` methods.
    y
        ``(n,)`` measured values.

    Returns
    -------
    weights, intercept
        ``y ~ intercept + preds @ weights`` with ``weights >= 0`` (least squares,
        ``scipy.optimize.nnls`` on centred values): stacked generalisation, where a
        method that adds nothing gets weight 0.
    """
    from scipy.optimize import nnls

    p = np.asarray(preds, np.float64)
    t = np.asarray(y, np.float64)
    pm, tm = p.mean(0), t.mean()
    w, _ = nnls(p - pm, t - tm)
    return w, float(tm - pm @ w)


def cross_fitted_blend(preds: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions of the blend itself: weights fitted without each fold."""
    out = np.full(len(y), np.nan)
    for f in np.unique(folds):
        held = folds == f
        if (~held).sum() < 2:
            continue
        w, b = fit_blend(preds[~held], y[~held])
        out[held] = b + preds[held] @ w
    return out


# ------------------------------------------------------------------------------- choice
def choose_methods(val_r: dict[str, list[float | None]], names: list[str], prefer: str | None = "blend") -> dict[str, dict]:
    """Per element, the method kept and the best baseline, from validation r.

    Parameters
    ----------
    val_r
        Method -> per-element Pearson r on held-out validation tiles (None where undefined).
    names
        Element names, in the order of the lists.
    prefer
        The stacked method (the blend of all candidates) is kept whenever it validates
        at least as well as the best baseline: a stack of several methods is steadier
        on new ground than whichever single method won a noisy validation. Otherwise
        (or with ``prefer=None``) the method with the highest validation r is kept.

    Returns
    -------
    dict
        Element -> ``{"method", "val_r", "baseline", "val_r_baseline", "val_skill"}``.
        Either way the kept method never validates worse than the best baseline
        (baselines compete too, and win ties).
    """
    out = {}
    order = list(BASELINES) + [m for m in val_r if m not in BASELINES]  # baselines first: ties keep them
    for i, el in enumerate(names):
        score = {m: (val_r[m][i] if val_r[m][i] is not None and np.isfinite(val_r[m][i]) else -np.inf) for m in order}
        base = max((m for m in BASELINES if m in score), key=lambda m: score[m])
        kept = max(order, key=lambda m: score[m])  # max keeps the first of equals: a baseline
        if prefer in score and np.isfinite(score[prefer]) and score[prefer] >= score[base]:
            kept = prefer
        out[el] = {
            "method": kept,
            "val_r": None if not np.isfinite(score[kept]) else float(score[kept]),
            "baseline": base,
            "val_r_baseline": None if not np.isfinite(score[base]) else float(score[base]),
            "val_skill": (float(score[kept] - score[base]) if np.isfinite(score[kept]) and np.isfinite(score[base])
                          else None),
        }
    return out
