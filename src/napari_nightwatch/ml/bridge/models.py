"""Saved XRF bridges: listing, loading (with their signature checked against the
image embeddings) and the in-process cache, so a query does not rebuild the encoder
from safetensors each time.

Layout of ``models/<encoder_id>/``: attrs (config, encoder_hash, head_hash,
image_model_id, image_signature, grid_id, grid, split, element_names, target_mean/std,
validation, history, head_shape); ``encoder`` and ``head`` safetensors bytes;
``split`` (n_tiles,) int8; ``bank_tiles``, ``bank_vectors``, ``bank_elements``,
``bank_descriptors`` (colour statistics + texture of the training tiles),
``bank_context_colour`` (their colour and that of their surroundings) and
``baselines/<method>/`` (ridge coefficients of the descriptor models, random features
of the kernel model); attrs
``selection``: per element the method kept by validation and the best baseline."""

from __future__ import annotations

import numpy as np

from ...core import signature
from ...core.errors import NightwatchError
from ...store import layout
from ...store.embeddings import Embeddings, open_embeddings
from ..spectrum_encoder import SpectrumEncoderConfig

#: the inverse head: members of the ensemble and their width
HEAD_MEMBERS, HEAD_HIDDEN = 5, 64

#: what an encoder must share with the image embeddings it was trained against
SIGNATURE_KEYS = ("model", "pretrained", "model_hash", "dim", "preprocessing")


# ------------------------------------------------------------------------------- loading
class XrfBridge:
    """A trained spectrum encoder + inverse head, loaded from ``models/<encoder_id>/``."""

    def __init__(self, store, encoder_id: str) -> None:
        from ..spectrum_encoder import build_spectrum_encoder, load_safetensors_bytes

        g = store.root[layout.model(encoder_id)]
        self.store = store
        self.encoder_id = encoder_id
        self.attrs = dict(g.attrs["nightwatch"])
        self.config = SpectrumEncoderConfig.from_dict(self.attrs["config"])
        if self.config.config_hash() != self.attrs.get("config_hash"):
            raise NightwatchError(f"The config of spectrum encoder {encoder_id} in {store.path} does not match its hash.")
        self.encoder = build_spectrum_encoder(self.config)
        load_safetensors_bytes(self.encoder, np.asarray(g["encoder"][...]).tobytes(), f"spectrum encoder {encoder_id}")
        self.encoder.eval()
        self.element_names = list(self.attrs.get("element_names", []))
        self.head = None
        if "head" in g:
            self.head = build_head(self.config.dim, len(self.element_names))
            load_safetensors_bytes(self.head, np.asarray(g["head"][...]).tobytes(), f"inverse head {encoder_id}")
            self.head.eval()
            self.bank_elements = np.asarray(g["bank_elements"][...], np.float32)
        self.selection: dict = dict(self.attrs.get("selection") or {})
        self.bank_descriptors = np.asarray(g["bank_descriptors"][...], np.float64) if "bank_descriptors" in g else None
        self.bank_context_colour = (np.asarray(g["bank_context_colour"][...], np.float64)
                                    if "bank_context_colour" in g else None)
        self.ridges: dict = {}
        if "baselines" in g:
            from .baselines import regressor_from_arrays

            for method, sub in g["baselines"].groups():
                self.ridges[method] = regressor_from_arrays({k: np.asarray(v[...]) for k, v in sub.arrays()})
        self.bank_tiles = np.asarray(g["bank_tiles"][...], np.int64)
        self.bank_vectors = np.asarray(g["bank_vectors"][...], np.float32)
        self.split = np.asarray(g["split"][...], np.int8)

    @property
    def image_model_id(self) -> str:
        return self.attrs["image_model_id"]

    @property
    def grid_id(self) -> str:
        return self.attrs["grid_id"]

    @property
    def temperature(self) -> float:
        return float(self.attrs["training"]["temperature"])

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Raw spectra (cube channels) or element vectors ``(n, m)`` -> unit vectors ``(n, dim)``."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if x.shape[1] != self.config.n_inputs:
            raise NightwatchError(
                f"Spectrum encoder {self.encoder_id} expects {self.config.n_inputs} "
                f"{'channels' if self.config.input_kind == 'spectrum' else 'element intensities'}; got {x.shape[1]}."
            )
        return encode_in_batches(self.encoder, x)


def list_xrf_encoders(store) -> list[str]:
    """Ids of the complete spectrum encoders in a store, oldest first."""
    if not store.has("models"):
        return []
    done = store.completed()
    ids = [m for m, _ in store.root["models"].groups() if m.startswith("xrf-") and f"models/{m}" in done]
    return sorted(ids, key=lambda m: done[f"models/{m}"].get("created", ""))


#: loaded bridges by (store, encoder id, weight hashes): a query does not rebuild the
#: encoder from safetensors each time, and retrained weights change the key
_BRIDGES: dict[tuple, XrfBridge] = {}


def load_xrf_bridge(
    store,
    encoder_id: str | None = None,
    *,
    image_model_id: str | None = None,
    grid_id: str | None = None,
) -> XrfBridge:
    """Load a trained spectrum encoder, checking it fits the store's embeddings.

    Parameters
    ----------
    store
        Painting store.
    encoder_id
        Which encoder (default: the newest one matching ``image_model_id`` / ``grid_id``).
    image_model_id
        The image model whose space the caller wants; an encoder trained against
        another model's embeddings is refused with one sentence.
    grid_id
        Restrict the default choice to encoders trained on this grid.
    """
    ids = list_xrf_encoders(store)
    if not ids:
        raise NightwatchError(f"{store.path} has no trained spectrum encoder; run `nightwatch train-xrf` first.")
    if encoder_id is None:
        cands = [i for i in ids if grid_id is None or store.node_attrs(layout.model(i)).get("grid_id") == grid_id]
        if image_model_id is not None:
            match = [i for i in cands if store.node_attrs(layout.model(i)).get("image_model_id") == image_model_id]
            if not match and cands:
                other = store.node_attrs(layout.model(cands[-1])).get("image_model_id")
                raise NightwatchError(
                    f"The spectrum encoder {cands[-1]} was trained against embeddings of {other!r}, not {image_model_id!r}; "
                    f"retrain it for this model (nightwatch train-xrf --model {image_model_id})."
                )
            cands = match
        if not cands:
            raise NightwatchError(f"{store.path} has no spectrum encoder for grid {grid_id!r}; it has {', '.join(ids)}.")
        encoder_id = cands[-1]
    elif encoder_id not in ids:
        raise NightwatchError(f"{store.path} has no spectrum encoder {encoder_id!r}; it has {', '.join(ids)}.")
    # made before a new registration, another cube or refitted maps: refuse, never answer from it
    store.check_fresh(layout.model(encoder_id), "retrain it with `nightwatch train-xrf`")
    attrs = store.node_attrs(layout.model(encoder_id))
    key = (str(store.path), encoder_id, attrs.get("encoder_hash"), attrs.get("head_hash"))
    bridge = _BRIDGES.get(key)
    if bridge is None:
        bridge = _BRIDGES[key] = XrfBridge(store, encoder_id)
    if image_model_id is not None and bridge.image_model_id != image_model_id:
        raise NightwatchError(
            f"The spectrum encoder {encoder_id} was trained against embeddings of {bridge.image_model_id!r}, "
            f"not {image_model_id!r}; retrain it for this model (nightwatch train-xrf --model {image_model_id})."
        )
    # the embeddings it was trained against must still be the ones in the store
    emb = open_tile_embeddings(store, bridge.grid_id, bridge.image_model_id)
    diff = signature.mismatch(bridge.attrs.get("image_signature", {}), emb.signature, SIGNATURE_KEYS)
    if diff:
        raise NightwatchError(
            f"The spectrum encoder {encoder_id} was trained against other embeddings than grid "
            f"{bridge.grid_id}/{bridge.image_model_id} now holds ({diff}); retrain it with `nightwatch train-xrf`."
        )
    return bridge


# ------------------------------------------------------------------------------- embeddings
def open_tile_embeddings(store, grid_id: str | None = None, model_id: str | None = None) -> Embeddings:
    """The image embeddings to pair with XRF data (the only ones, or the named ones).

    The same handle search uses (:func:`napari_nightwatch.ml.embed.open_embeddings`):
    a missing or ambiguous choice is one sentence listing what the store holds, and
    embeddings made from another mosaic, grid or mask are refused.
    """
    return open_embeddings(store, grid_id, model_id)


def build_head(dim: int, n_out: int, n_members: int = HEAD_MEMBERS, hidden: int = HEAD_HIDDEN, dropout: float = 0.3):
    """An ensemble of small MLPs (image embedding -> element intensities), batched.

    The members' weights are stacked so the whole ensemble trains and predicts in
    one batched matrix product per layer, not one Python step per member.
    """
    import torch

    nn = torch.nn

    class _Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w1 = nn.Parameter(torch.randn(n_members, dim, hidden, generator=g) / np.sqrt(dim))
            self.b1 = nn.Parameter(torch.zeros(n_members, 1, hidden))
            self.w2 = nn.Parameter(torch.randn(n_members, hidden, n_out, generator=g) / np.sqrt(hidden))
            self.b2 = nn.Parameter(torch.zeros(n_members, 1, n_out))
            self.drop = nn.Dropout(dropout)
            self.register_buffer("target_mean", torch.zeros(n_out))
            self.register_buffer("target_std", torch.ones(n_out))

        def standardised(self, v):  # (members, n, n_out)
            h = torch.nn.functional.gelu(torch.matmul(v, self.w1) + self.b1)
            return torch.matmul(self.drop(h), self.w2) + self.b2

        def forward(self, v):  # (members, n, n_out) in intensity units
            return self.standardised(v) * self.target_std + self.target_mean

    return _Head()


def encode_in_batches(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out.append(model.encode_raw(torch.as_tensor(x[s : s + batch], dtype=torch.float32)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), np.float32)
