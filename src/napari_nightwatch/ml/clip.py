"""CLIP models through open_clip: one factory, :func:`load_clip`, returning a :class:`ClipEngine`.

A model is named by an open_clip architecture (``ViT-B-32``, the package's own
``nightwatch-tiny``, or ``hf-hub:org/name``) and a ``pretrained`` source: an
open_clip tag (``laion2b_s34b_b79k``), a local checkpoint file, a local directory
holding one, or ``"none"`` for random weights (pipeline tests and benchmarks only).

The engine is what the rest of the package sees (search receives it, never builds
it): ``model_id``, ``dim``, ``signature``, ``random_weights``, ``image_size``,
``encode_images(uint8 (n, h, w, 3)) -> float32 (n, dim)`` and
``encode_text(list[str]) -> float32 (n, dim)``, both L2-normalised.

torch and open_clip are imported inside functions so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import NightwatchError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
CONFIG_DIR = Path(__file__).parent / "model_configs"
# random weights are drawn from a fixed seed so that every worker process of a
# cluster builds the same "none" model (and the same model_hash) as the driver
RANDOM_WEIGHTS_SEED = 0
# a checkpoint directory is searched for these names first (open_clip's own order)
_CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_PRECISIONS = ("fp32", "fp16", "bf16")

_registered = False


def register_model_configs() -> None:
    """Make the package's model configs (``nightwatch-tiny``) known to open_clip."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if available, else ``"mps"``, else ``"cpu"``; other names are checked."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise NightwatchError(f"--device {device!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NightwatchError(f"--device {device!r} was asked for but this machine has no CUDA GPU; use auto or cpu.")
    return name


def safe_id(text: str) -> str:
    """A filesystem- and zarr-safe name made from ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_hash(model) -> str:
    """Cheap, stable hash of a model's weights: every tensor's name and shape, and the
    values of up to eight tensors spread over the state dict (first, last, between).

    Hashing all values of a 150 M-parameter model would take seconds; names, shapes
    and a sample of values already tell different checkpoints apart.
    """
    sd = model.state_dict()
    keys = list(sd)
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode())
        h.update(str(tuple(sd[k].shape)).encode())
    picks = sorted({int(i) for i in np.linspace(0, len(keys) - 1, num=min(8, len(keys)))})
    for i in picks:
        t = sd[keys[i]].detach().to("cpu").float().contiguous()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _find_checkpoint(directory: Path) -> Path | None:
    for name in _CHECKPOINT_NAMES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(
        [p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in directory.glob(ext)],
        key=lambda p: (p.suffix != ".safetensors", p.name),
    )
    return found[0] if found else None


def _offline_message(model: str, tag: str | None, exc: BaseException) -> str:
    what = model if tag is None else f"{model}/{tag}"
    return (
        f"The weights for {what} could not be downloaded ({type(exc).__name__}; this machine may be "
        f"offline); download open_clip_pytorch_model.bin elsewhere and pass it with "
        f"--pretrained /path/to/open_clip_pytorch_model.bin (or the directory holding it), "
        f"or pretrained=... in Python."
    )


@contextmanager
def _hub_offline_when_unreachable():
    """Switch huggingface_hub to offline mode while the hub cannot be reached.

    Without this, an offline machine spends about a minute in retries before the
    download fails; offline mode fails at once and still serves cached weights. The
    probe is skipped behind a proxy (a direct connection would fail but downloads work).
    """
    import os
    import socket
    from urllib.parse import urlparse

    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - open_clip then uses plain URLs
        hf_constants = None
    if proxied or hf_constants is None or hf_constants.HF_HUB_OFFLINE:
        yield
        return
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=3).close()
        reachable = True
    except OSError:
        reachable = False
    if reachable:
        yield
        return
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = False


class ClipEngine:
    """A loaded CLIP model with batched tensor preprocessing. Build it with :func:`load_clip`.

    Attributes
    ----------
    model_id
        Filesystem-safe name, e.g. ``ViT-B-32__laion2b_s34b_b79k`` or ``nightwatch-tiny__none``.
    dim
        Embedding dimension.
    signature
        What the embeddings depend on: model name, pretrained tag or checkpoint hash,
        a hash of the weights, dimension, preprocessing and package version.
    random_weights
        True when built with ``pretrained="none"``.
    image_size
        Edge of the square model input in pixels.
    spec
        ``dict(model, pretrained, device, precision, cache_dir)``: what a worker
        process needs to build the same engine (see :mod:`.embed`).
    """

    def __init__(
        self,
        net,
        tokenizer,
        *,
        model_name: str,
        pretrained_label: str,
        model_id: str,
        model_hash: str,
        device: str,
        precision: str,
        mean: Sequence[float],
        std: Sequence[float],
        random_weights: bool,
        spec: dict[str, Any],
    ) -> None:
        import torch

        self._net = net
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained_label
        self.model_id = model_id
        self.model_hash = model_hash
        self.device = device
        self.precision = precision
        self.random_weights = bool(random_weights)
        self.spec = dict(spec)
        size = getattr(net.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        # mean/std folded into one multiply-add on 0..255 input
        mean_t = torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
        std_t = torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        probe = self.encode_preprocessed(torch.zeros(1, 3, self.image_size, self.image_size))
        self.dim = int(probe.shape[1])

    # ---- identity ------------------------------------------------------------------
    @property
    def preprocessing(self) -> dict[str, Any]:
        """How tiles become model input (part of the signature)."""
        return {
            "image_size": self.image_size,
            "resize": "shortest-side bicubic antialias, centre crop",
            "mean": list(self.mean),
            "std": list(self.std),
            "input": "RGB uint8",
        }

    @property
    def signature(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "pretrained": self.pretrained,
            "model_hash": self.model_hash,
            "dim": self.dim,
            "preprocessing": self.preprocessing,
            "package_version": __version__,
        }

    def __repr__(self) -> str:
        return f"ClipEngine({self.model_id!r}, dim={self.dim}, device={self.device!r}, precision={self.precision!r})"

    # ---- images ----------------------------------------------------------------------
    def _as_batch(self, images: np.ndarray) -> np.ndarray:
        a = np.asarray(images)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[None]  # one (h, w, c) image
        elif a.ndim == 3:  # (n, h, w) grey
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
            raise NightwatchError(f"Images must be an array (n, height, width, 3) of RGB pixels; got shape {a.shape}.")
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        if a.shape[-1] == 4:
            a = a[..., :3]  # alpha does not reach the model
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
                a = a * 255.0
            a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        return a

    def preprocess(self, images: np.ndarray):
        """uint8 ``(n, h, w, 3)`` -> model-ready float32 tensor ``(n, 3, S, S)`` (CPU), as batched tensor ops.

        The shorter side is resized to ``image_size`` (bicubic, antialiased, like
        open_clip's PIL transform) and the centre cropped; then CLIP mean/std.
        """
        import torch
        import torch.nn.functional as F

        a = self._as_batch(images)
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            # bicubic overshoots; PIL clamps to the uint8 range, so do we
            x = x.clamp_(0.0, 255.0)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top : top + s, left : left + s]
        return (x * self._scale + self._shift).contiguous()

    def encode_preprocessed(self, x) -> np.ndarray:
        """Preprocessed tensor ``(n, 3, S, S)`` -> float32 ``(n, dim)`` L2-normalised embeddings."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            f = self._net.encode_image(x.to(device=self.device, dtype=self._dtype))
            f = F.normalize(f.float(), dim=-1)
        return f.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embed RGB images.

        Parameters
        ----------
        images
            uint8 array ``(n, h, w, 3)`` (alpha or grey are accepted and converted).
        batch_size
            Images per forward pass.

        Returns
        -------
        np.ndarray
            float32 ``(n, dim)``, rows of unit length.
        """
        a = self._as_batch(images)
        out = np.empty((a.shape[0], self.dim), np.float32)
        for i in range(0, a.shape[0], batch_size):
            out[i : i + batch_size] = self.encode_preprocessed(self.preprocess(a[i : i + batch_size]))
        return out

    # ---- text -------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts through the model's tokenizer and text tower.

        Parameters
        ----------
        texts
            Non-empty strings.

        Returns
        -------
        np.ndarray
            float32 ``(n, dim)``, rows of unit length.
        """
        import torch
        import torch.nn.functional as F

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise NightwatchError("Text query is empty; give at least one non-empty text.")
        tokens = self._tokenizer(texts).to(self.device)
        with torch.inference_mode():
            f = F.normalize(self._net.encode_text(tokens).float(), dim=-1)
        return f.cpu().numpy().astype(np.float32, copy=False)


def _build_random(open_clip, torch, model: str, quick_gelu: bool = False):
    # a fixed seed without disturbing the caller's random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return open_clip.create_model(
            model, pretrained=None, device="cpu", precision="fp32",
            pretrained_text=False, force_quick_gelu=quick_gelu,
        )


def _load_checkpoint(open_clip, net, path: Path, model: str) -> None:
    try:
        open_clip.load_checkpoint(net, str(path), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        text = str(exc)
        missing = re.search(r"Missing key\(s\)[^:]*: (.*?)\.\s", text + " ")
        mismatch = re.search(r"size mismatch for ([^:]+):", text)
        if missing or mismatch or "state_dict" in text or "Unexpected key" in text:
            detail = (
                f"size mismatch for {mismatch.group(1)}" if mismatch
                else f"missing {missing.group(1)[:80]}" if missing
                else text.splitlines()[0][:120]
            )
            raise NightwatchError(
                f"Checkpoint {path} does not fit model {model} ({detail}); pass the --model it was trained as."
            ) from exc
        raise NightwatchError(f"Checkpoint {path} could not be read as an open_clip checkpoint ({text[:120]}).") from exc
    except Exception as exc:  # unpickling errors, truncated files, not a checkpoint at all
        raise NightwatchError(
            f"Checkpoint {path} could not be read as an open_clip checkpoint ({type(exc).__name__}: {str(exc)[:120]})."
        ) from exc


def load_clip(
    model: str = DEFAULT_MODEL,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    *,
    device: str = "auto",
    precision: str | None = None,
    cache_dir: str | Path | None = None,
) -> ClipEngine:
    """Build a CLIP model and wrap it as a :class:`ClipEngine`.

    Parameters
    ----------
    model
        open_clip architecture name (``ViT-B-32``, ``nightwatch-tiny``, ...) or
        ``hf-hub:org/name`` (config and weights from the Hugging Face hub;
        ``pretrained`` is then ignored).
    pretrained
        An open_clip pretrained tag, a local checkpoint file (``.bin``, ``.pt``,
        ``.safetensors``), a local directory holding one (with or without an
        ``open_clip_config.json``), or ``"none"`` for random weights (a loud warning;
        for pipeline tests and benchmarks).
    device
        ``"auto"`` (cuda, then mps, then cpu) or a torch device name.
    precision
        ``"fp32"``, ``"fp16"`` or ``"bf16"``; default half precision on CUDA, fp32 elsewhere.
    cache_dir
        Where downloaded weights are cached (open_clip's default when None).

    Returns
    -------
    ClipEngine

    Raises
    ------
    NightwatchError
        Unknown model or tag, weights that cannot be downloaded (with how to pass a
        local checkpoint), a checkpoint that does not fit the model.
    """
    import open_clip
    import torch

    register_model_configs()
    # the spec keeps the caller's "auto" choices so that a GPU worker of a cluster
    # picks its own device and half precision
    spec = {
        "model": str(model),
        "pretrained": None if pretrained is None else str(pretrained),
        "device": device,
        "precision": precision,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    dev = resolve_device(device)
    precision = precision or ("fp16" if dev.startswith("cuda") else "fp32")
    if precision not in _PRECISIONS:
        raise NightwatchError(f"precision {precision!r} must be one of {', '.join(_PRECISIONS)}.")
    cache = None if cache_dir is None else str(cache_dir)
    tag = "none" if pretrained is None or str(pretrained).strip().lower() in ("", "none") else str(pretrained)
    tokenizer_name = model
    random_weights = False
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD

    if model.startswith("hf-hub:"):
        from open_clip.pretrained import download_pretrained_from_hf

        hub_id = model[len("hf-hub:") :]
        try:
            with _hub_offline_when_unreachable():
                download_pretrained_from_hf(hub_id, filename="open_clip_config.json", cache_dir=cache)
                download_pretrained_from_hf(hub_id, cache_dir=cache)
                net = open_clip.create_model(model, device="cpu", precision="fp32", cache_dir=cache)
        except Exception as exc:
            raise NightwatchError(_offline_message(model, None, exc)) from exc
        pp = getattr(net.visual, "preprocess_cfg", {})
        mean, std = pp.get("mean", mean), pp.get("std", std)
        label, model_name, model_id = model, model, safe_id(model.replace("hf-hub:", "hf-"))
    else:
        if open_clip.get_model_config(model) is None:
            known = ", ".join(m for m in open_clip.list_models() if m.startswith(("ViT-B", "nightwatch")))
            raise NightwatchError(
                f"--model {model!r} is not an open_clip architecture (e.g. {known}) nor hf-hub:ORG/NAME."
            )
        model_name = model
        if tag == "none":
            net = _build_random(open_clip, torch, model)
            random_weights = True
            label, model_id = "none", f"{safe_id(model)}__none"
        else:
            path = Path(tag).expanduser()
            pcfg = open_clip.get_pretrained_cfg(model, tag) if not path.exists() else {}
            if path.is_dir() and (path / "open_clip_config.json").is_file():
                ckpt = _find_checkpoint(path)
                if ckpt is None:
                    raise NightwatchError(f"Directory {path} has no checkpoint (.safetensors, .bin, .pth) to load.")
                try:
                    net = open_clip.create_model(f"local-dir:{path}", device="cpu", precision="fp32")
                except RuntimeError as exc:
                    raise NightwatchError(
                        f"Checkpoint {ckpt} does not fit the model described by {path / 'open_clip_config.json'} "
                        f"({str(exc).splitlines()[0][:120]})."
                    ) from exc
                except Exception as exc:
                    raise NightwatchError(f"Directory {path} could not be loaded as an open_clip model ({exc}).") from exc
                tokenizer_name = f"local-dir:{path}"
                pp = getattr(net.visual, "preprocess_cfg", {})
                mean, std = pp.get("mean", mean), pp.get("std", std)
            elif path.exists():
                ckpt = _find_checkpoint(path) if path.is_dir() else path
                if ckpt is None:
                    raise NightwatchError(f"Directory {path} has no checkpoint (.safetensors, .bin, .pth) to load.")
                net = _build_random(open_clip, torch, model)
                _load_checkpoint(open_clip, net, ckpt, model)
            elif pcfg:
                from open_clip.pretrained import download_pretrained

                try:
                    with _hub_offline_when_unreachable():
                        ckpt = Path(download_pretrained(pcfg, cache_dir=cache))
                except Exception as exc:
                    raise NightwatchError(_offline_message(model, tag, exc)) from exc
                net = _build_random(open_clip, torch, model, quick_gelu=bool(pcfg.get("quick_gelu", False)))
                _load_checkpoint(open_clip, net, ckpt, model)
                mean, std = pcfg.get("mean", mean), pcfg.get("std", std)
            else:
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none known"
                raise NightwatchError(
                    f"--pretrained {tag!r} is neither a pretrained tag of {model} ({tags}), an existing "
                    f"checkpoint file or directory, nor 'none'."
                )
            if pcfg:
                label, model_id = tag, f"{safe_id(model)}__{safe_id(tag)}"
            else:
                digest = _sha256_file(ckpt)
                label, model_id = f"checkpoint:{digest[:16]}", f"{safe_id(model)}__ckpt-{digest[:8]}"

    model_hash = state_dict_hash(net)
    net.eval()
    net.to(device=dev)
    if precision != "fp32":
        # open_clip's mixed precision: matmul/conv weights in half, layer norms in fp32
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(net, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    try:
        tokenizer = open_clip.get_tokenizer(tokenizer_name, cache_dir=cache)
    except Exception as exc:
        raise NightwatchError(f"The tokenizer of {model} could not be loaded ({type(exc).__name__}: {exc}).") from exc
    if random_weights:
        warnings.warn(
            f"{model} is built with RANDOM weights (pretrained='none'): its embeddings carry no meaning and "
            f"search results are noise; use it only for pipeline tests and benchmarks.",
            UserWarning,
            stacklevel=2,
        )
    return ClipEngine(
        net,
        tokenizer,
        model_name=model_name,
        pretrained_label=label,
        model_id=model_id,
        model_hash=model_hash,
        device=dev,
        precision=precision,
        mean=mean,
        std=std,
        random_weights=random_weights,
        spec=spec,
    )


# ------------------------------------------------------------------ one engine cache per process
_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def cached_engine(spec: dict[str, Any]):
    """The engine for ``spec`` (``load_clip`` keyword arguments), built once per process.

    The one engine cache: each dask worker loads its model once, and the napari
    widgets, the CLI and the query runner share an engine instead of rebuilding it.
    """
    key = json.dumps(spec, sort_keys=True, default=str)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = load_clip(**spec)
        return _ENGINES[key]
