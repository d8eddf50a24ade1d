"""The spectrum encoder: an XRF spectrum (or element-intensity vector) -> CLIP space.

One config dataclass plus one factory (:func:`build_spectrum_encoder`), as in
open_clip.  The network sees a normalised input:

- ``input_kind="spectrum"``: ``sqrt(counts / total)`` binned to ``n_bins`` energy
  bins.  The square root is the variance-stabilising transform of Poisson counts
  (a single noisy pixel and a tile mean then differ by noise of equal size
  everywhere); dividing by the total removes live time and beam current.
- ``input_kind="maps"``: element intensities divided by their training 99th
  percentile, square-rooted for the same reason.

Features are then standardised with the training mean/std (stored as buffers, so
a checkpoint carries its own normalisation).  Output rows are L2-normalised.

The physics augmentations (:func:`augment_spectra`) act on raw counts on the
cube's channel axis: calibration gain/offset jitter, a small change of detector
resolution (Gaussian smoothing), and Poisson resampling at a lower total count
(down to a fraction of one XRF pixel's counts, so single-pixel queries are in
distribution even though training pairs are tile means).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..core.errors import NightwatchError


@dataclass
class SpectrumEncoderConfig:
    """Everything needed to rebuild a spectrum encoder and feed it.

    Parameters
    ----------
    input_kind
        "spectrum" (cube channels) or "maps" (element-intensity vector).
    n_inputs
        Channels of the cube (spectrum) or number of elements (maps).
    dim
        Output dimension: the image model's embedding dimension.
    arch
        "mlp" or "conv" (1-D convolutions over the binned spectrum).
    n_bins
        Energy bins the spectrum is summed into (spectrum only).
    hidden
        Width of the hidden layers.
    dropout
        Dropout between hidden layers.
    calibration
        The cube's energy calibration ``{offset_kev, gain_kev, quadratic_kev}``
        (spectrum only): query spectra are brought onto this axis.
    element_names
        Element names of the input vector (maps) or of the inverse's outputs.
    pixel_counts
        Mean total counts of one XRF pixel (for Poisson augmentation).
    """

    input_kind: str = "spectrum"
    n_inputs: int = 1024
    dim: int = 512
    arch: str = "mlp"
    n_bins: int = 256
    hidden: int = 256
    dropout: float = 0.1
    calibration: dict[str, float] | None = None
    element_names: list[str] = field(default_factory=list)
    pixel_counts: float = 1000.0

    def __post_init__(self) -> None:
        if self.input_kind not in ("spectrum", "maps"):
            raise NightwatchError(f"Spectrum encoder input_kind {self.input_kind!r} must be 'spectrum' or 'maps'.")
        if self.arch not in ("mlp", "conv"):
            raise NightwatchError(f"Spectrum encoder arch {self.arch!r} must be 'mlp' or 'conv'.")
        if self.n_inputs < 1 or self.dim < 1:
            raise NightwatchError(f"Spectrum encoder needs positive n_inputs and dim; got {self.n_inputs}, {self.dim}.")

    @property
    def n_features(self) -> int:
        """Length of the normalised input vector the network sees."""
        if self.input_kind == "maps":
            return self.n_inputs
        return min(self.n_bins, self.n_inputs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpectrumEncoderConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _torch():
    import torch

    return torch


def bin_edges(config: SpectrumEncoderConfig) -> np.ndarray:
    """Channel edges of the energy bins (equal channel counts per bin)."""
    return np.linspace(0, config.n_inputs, config.n_features + 1).round().astype(np.int64)


def bin_inputs(x, config: SpectrumEncoderConfig):
    """Raw spectra ``(n, n_channels)`` -> counts summed in ``n_features`` energy bins (torch).

    Element vectors (maps) pass through unchanged.
    """
    torch = _torch()
    x = torch.as_tensor(x, dtype=torch.float32).clamp_min(0)
    if config.input_kind == "maps":
        return x
    edges = bin_edges(config)
    cs = torch.nn.functional.pad(torch.cumsum(x, dim=1), (1, 0))
    return cs[:, edges[1:]] - cs[:, edges[:-1]]


def features_from_binned(binned, config: SpectrumEncoderConfig, scale=None):
    """Binned counts (or element vectors) -> the normalised features the network sees.

    Spectra: ``sqrt(fraction of counts per bin * n_bins)``; maps: ``sqrt(x / scale)``.
    """
    torch = _torch()
    b = torch.as_tensor(binned, dtype=torch.float32).clamp_min(0)
    if config.input_kind == "maps":
        s = torch.as_tensor(scale, dtype=torch.float32) if scale is not None else 1.0
        return torch.sqrt(b / s)
    total = b.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return torch.sqrt(b / total * b.shape[1])


def normalise_inputs(x, config: SpectrumEncoderConfig, scale=None):
    """Raw spectra ``(n, n_channels)`` or maps vectors ``(n, c)`` -> features (torch).

    Parameters
    ----------
    x
        torch tensor or numpy array of counts / intensities (float).
    config
        The encoder config.
    scale
        Per-element scale (maps only), shape ``(c,)``.
    """
    return features_from_binned(bin_inputs(x, config), config, scale)


def build_spectrum_encoder(config: SpectrumEncoderConfig):
    """The factory: a torch ``nn.Module`` mapping normalised features -> unit vectors.

    The module has buffers ``feat_mean``, ``feat_std`` (feature standardisation) and
    ``map_scale`` (maps only), and a learnable ``logit_scale`` (InfoNCE temperature).
    Call it on features from :func:`normalise_inputs`, or use ``encode_raw`` on raw
    spectra.
    """
    torch = _torch()
    nn = torch.nn

    class _Encoder(nn.Module):
        def __init__(self, cfg: SpectrumEncoderConfig) -> None:
            super().__init__()
            self.cfg = cfg
            f, h, d = cfg.n_features, cfg.hidden, cfg.dim
            self.register_buffer("feat_mean", torch.zeros(f))
            self.register_buffer("feat_std", torch.ones(f))
            self.register_buffer("map_scale", torch.ones(cfg.n_inputs if cfg.input_kind == "maps" else 1))
            if cfg.arch == "conv" and cfg.input_kind == "spectrum":
                self.conv = nn.Sequential(
                    nn.Conv1d(1, 16, 7, stride=2, padding=3), nn.GELU(),
                    nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.GELU(),
                    nn.Conv1d(32, 32, 5, stride=2, padding=2), nn.GELU(),
                )
                n_len = f
                for _ in range(3):  # each stride-2 conv with "same" padding halves, rounding up
                    n_len = -(-n_len // 2)
                n_flat = 32 * n_len
                self.mlp = nn.Sequential(
                    nn.Linear(n_flat, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, d)
                )
            else:
                self.conv = None
                self.mlp = nn.Sequential(
                    nn.Linear(f, h), nn.GELU(), nn.Dropout(cfg.dropout),
                    nn.Linear(h, h), nn.GELU(), nn.Dropout(cfg.dropout),
                    nn.Linear(h, d),
                )
            # CLIP's initial temperature 1/0.07
            self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

        def forward(self, feats):
            z = (feats - self.feat_mean) / self.feat_std
            if self.conv is not None:
                z = self.conv(z[:, None, :]).flatten(1)
            z = self.mlp(z)
            return torch.nn.functional.normalize(z, dim=-1)

        def encode_raw(self, x):
            """Raw spectra (cube channels) or element vectors -> unit vectors."""
            return self.encode_binned(bin_inputs(x, self.cfg))

        def encode_binned(self, b):
            """Binned counts (what :func:`augment_spectra` returns) -> unit vectors."""
            scale = self.map_scale if self.cfg.input_kind == "maps" else None
            return self.forward(features_from_binned(b, self.cfg, scale))

    return _Encoder(config)


def augment_spectra(x, config: SpectrumEncoderConfig, generator=None, strength: float = 1.0):
    """Physics augmentations of raw spectra or element vectors (torch, batched).

    Spectra ``(n, n_channels)`` -> augmented *binned* counts ``(n, n_features)``:
    gain jitter (+-1%) and offset shift (+-1.5 channels) by linear re-interpolation
    of the channel axis, a detector-resolution change by Gaussian smoothing (sigma
    0..1.5 channels), binning, then Poisson resampling at a total count drawn
    log-uniformly between a quarter of one XRF pixel's counts and the spectrum's own
    (tile-mean) count level.  Poisson noise is drawn on the bins: a sum of
    independent Poisson channels is Poisson, so this is exact and 4x cheaper.

    Maps ``(n, c)`` -> ``(n, c)``: per-element gain jitter (5%) and Gaussian noise
    (5% of the mean), the nearest thing exported images have to counting noise.
    """
    torch = _torch()
    x = torch.as_tensor(x, dtype=torch.float32)
    n, m = x.shape
    g = generator

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    if config.input_kind == "maps":
        gain = 1 + 0.05 * strength * torch.randn(n, m, generator=g)
        noise = 0.05 * strength * torch.randn(n, m, generator=g) * x.mean(0, keepdim=True).clamp_min(1e-6)
        return (x * gain + noise).clamp_min(0)

    ch = torch.arange(m, dtype=torch.float32)
    gain = 1 + 0.01 * strength * (2 * rand(n, 1) - 1)
    shift = 1.5 * strength * (2 * rand(n, 1) - 1)
    src = (ch[None] - shift) / gain
    i0 = src.floor().clamp(0, m - 2)
    frac = (src - i0).clamp(0, 1)
    i0 = i0.long()
    y = torch.gather(x, 1, i0) * (1 - frac) + torch.gather(x, 1, i0 + 1) * frac
    y = torch.where((src >= 0) & (src <= m - 1), y, torch.zeros_like(y))
    # resolution change: one small Gaussian per batch, as a few shifted sums (a conv1d
    # over long spectra is an order of magnitude slower on a CPU for 7 taps)
    sigma = float(1.5 * strength * torch.rand(1, generator=g))
    if sigma > 0.2:
        r = int(np.ceil(3 * sigma))
        taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        taps /= taps.sum()
        pad = torch.nn.functional.pad(y, (r, r), mode="replicate")
        y = sum(float(t) * pad[:, i : i + m] for i, t in enumerate(taps))
    b = bin_inputs(y, config)
    total = b.sum(1, keepdim=True).clamp_min(1e-6)
    lo = max(1.0, 0.25 * config.pixel_counts)
    hi = torch.maximum(total, torch.tensor(lo))
    target = torch.exp(torch.log(torch.tensor(lo)) + rand(n, 1) * (torch.log(hi) - np.log(lo)))
    return torch.poisson(b / total * target, generator=g)


def state_dict_hash(module) -> str:
    """sha256 (16 hex) of a module's tensors, in a stable order."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def to_safetensors_bytes(module) -> bytes:
    """Serialise a module's state dict as safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def load_safetensors_bytes(module, data: bytes, what: str) -> None:
    """Load safetensors bytes into ``module``; a mismatch is one clear sentence."""
    from safetensors.torch import load

    try:
        state = load(bytes(data))
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise NightwatchError(f"The checkpoint of {what} does not fit its config ({str(exc).splitlines()[0]}).") from exc
