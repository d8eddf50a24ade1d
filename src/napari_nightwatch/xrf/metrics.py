"""Agreement figures between measured and predicted element maps (numpy only).

Owns Pearson r, block SSIM on held-out tiles and the leave-block-out r used by the
XRF bridge's evidence rule, so the CLI, the widgets and the benchmarks report the
same numbers.
"""

from __future__ import annotations

import numpy as np


def leave_block_out_r(
    image_vectors: np.ndarray, elements: np.ndarray, blocks: np.ndarray, *, k: int = 16, inv_t: float = 20.0,
    chunk: int = 2048,
) -> list[float | None]:
    """Per element: how well the photograph predicts it, without looking at its block.

    Each training tile's composition is estimated from the training tiles that look
    most alike *in other spatial blocks* (softmax-weighted), and compared with its
    measurement (Pearson r).  Near 0 where the photograph carries no evidence of the
    element (a hidden layer); None where the element does not vary.
    """
    n = len(image_vectors)
    pred = np.zeros_like(elements, dtype=np.float64)
    for s in range(0, n, chunk):
        sims = image_vectors[s : s + chunk] @ image_vectors.T
        sims[blocks[s : s + chunk, None] == blocks[None, :]] = -np.inf
        idx, top = top_k_rows(sims, k)
        w = np.exp((top - top.max(1, keepdims=True)) * inv_t)
        w[~np.isfinite(top)] = 0
        w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
        pred[s : s + chunk] = np.einsum("nk,nkc->nc", w, elements[idx])
    return [pearson_r(pred[:, i], elements[:, i]) for i in range(elements.shape[1])]


def pearson_r(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two vectors (None when either is constant or empty)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def block_ssim(measured: np.ndarray, predicted: np.ndarray, held_out: np.ndarray, block_tiles: int) -> float | None:
    """Mean SSIM over the held-out blocks of two (rows, cols) maps.

    Each block that is wholly held out and measured is compared on its own
    (window 7, or the block edge if smaller and odd), so no window mixes held-out
    tiles with training tiles; the data range is the measured map's range.
    """
    from skimage.metrics import structural_similarity

    rows, cols = measured.shape
    rng = float(np.nanmax(measured) - np.nanmin(measured)) if np.isfinite(measured).any() else 0.0
    if rng <= 0:
        return None
    win = min(7, block_tiles if block_tiles % 2 else block_tiles - 1)
    if win < 3:
        return None
    vals, weights = [], []
    for r0 in range(0, rows, block_tiles):
        for c0 in range(0, cols, block_tiles):
            sl = (slice(r0, r0 + block_tiles), slice(c0, c0 + block_tiles))
            m, p, h = measured[sl], predicted[sl], held_out[sl]
            if min(m.shape) < win or not h.all() or not np.isfinite(m).all():
                continue
            vals.append(structural_similarity(m, p, data_range=rng, win_size=win))
            weights.append(m.size)
    if not vals:
        return None
    return float(np.average(vals, weights=weights))


# ------------------------------------------------------------------------------- the inverse
def top_k_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return idx, np.take_along_axis(sims, idx, 1)
