"""The CLIP engine: the tiny config, preprocessing, checkpoints, offline failure, ViT-B-32 at random weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.ml.clip import load_clip

torch = pytest.importorskip("torch")


def _tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("nightwatch-tiny", "none", device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


def _tiles(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_random_weights_warn_loudly_and_are_reproducible(tiny):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        again = load_clip("nightwatch-tiny", "none", device="cpu")
    assert again.random_weights and tiny.random_weights
    assert tiny.model_id == "nightwatch-tiny__none"
    # every worker of a cluster must build the same random model
    assert again.model_hash == tiny.model_hash
    x = _tiles(3)
    np.testing.assert_array_equal(again.encode_images(x), tiny.encode_images(x))


def test_engine_interface(tiny):
    assert tiny.dim == 128 and tiny.image_size == 64
    sig = tiny.signature
    assert {"model", "pretrained", "model_hash", "dim", "preprocessing", "package_version"} <= set(sig)
    assert sig["pretrained"] == "none" and sig["dim"] == 128
    v = tiny.encode_images(_tiles(5, size=224))
    assert v.shape == (5, 128) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # different tiles give different embeddings
    assert np.abs(v[0] - v[1]).max() > 1e-3
    t = tiny.encode_text(["craquelure", "blue pigment particles"])
    assert t.shape == (2, 128) and np.isfinite(t).all()
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.abs(t[0] - t[1]).max() > 1e-3  # the real tokenizer gives different tokens
    with pytest.raises(NightwatchError, match="empty"):
        tiny.encode_text(["  "])


def test_preprocessing_is_clip_normalisation_and_resize(tiny):
    x = _tiles(2)  # already at image_size: no resize, only mean/std
    got = tiny.preprocess(x).numpy()
    mean = np.array(tiny.mean).reshape(1, 3, 1, 1)
    std = np.array(tiny.std).reshape(1, 3, 1, 1)
    want = (x.transpose(0, 3, 1, 2) / 255.0 - mean) / std
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a uniform 224-px tile resizes to the same uniform 64-px input
    flat = np.full((1, 224, 224, 3), 90, np.uint8)
    small = np.full((1, 64, 64, 3), 90, np.uint8)
    big = tiny.preprocess(flat)
    assert tuple(big.shape) == (1, 3, 64, 64)
    np.testing.assert_allclose(big.numpy(), tiny.preprocess(small).numpy(), atol=1e-4)
    # non-square input: shortest side resized, centre cropped
    assert tuple(tiny.preprocess(np.zeros((1, 100, 300, 3), np.uint8)).shape) == (1, 3, 64, 64)
    with pytest.raises(NightwatchError, match="height, width"):
        tiny.encode_images(np.zeros((2, 3, 8, 8, 8), np.uint8))


def test_local_checkpoint_file_and_directory(tmp_path, tiny):
    ckpt = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    ckpt.parent.mkdir()
    torch.save(tiny._net.state_dict(), ckpt)
    from_file = load_clip("nightwatch-tiny", str(ckpt), device="cpu")
    from_dir = load_clip("nightwatch-tiny", ckpt.parent, device="cpu")
    assert not from_file.random_weights
    assert from_file.model_id.startswith("nightwatch-tiny__ckpt-") and from_file.model_id == from_dir.model_id
    assert from_file.signature["pretrained"].startswith("checkpoint:")
    assert from_file.model_hash == tiny.model_hash
    x = _tiles(4)
    np.testing.assert_allclose(from_file.encode_images(x), tiny.encode_images(x), atol=1e-6)


def test_checkpoint_that_does_not_fit(tmp_path, tiny):
    sd = dict(tiny._net.state_dict())
    sd["text_projection"] = torch.zeros(64, 32)  # another embed_dim
    bad = tmp_path / "other.pt"
    torch.save(sd, bad)
    with pytest.raises(NightwatchError, match=r"does not fit model nightwatch-tiny \(size mismatch for text_projection"):
        load_clip("nightwatch-tiny", str(bad), device="cpu")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(NightwatchError, match="could not be read"):
        load_clip("nightwatch-tiny", str(junk), device="cpu")


def test_offline_failure_is_one_clear_sentence(tmp_path, monkeypatch):
    # fail fast instead of retrying the (unreachable) hub for a minute
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    except ImportError:  # pragma: no cover
        pass
    with pytest.raises(NightwatchError) as info:
        load_clip("ViT-B-32", "laion2b_s34b_b79k", device="cpu", cache_dir=tmp_path)
    msg = str(info.value)
    assert "weights for ViT-B-32/laion2b_s34b_b79k could not be downloaded" in msg
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in msg
    assert "\n" not in msg


def test_unknown_model_and_tag():
    with pytest.raises(NightwatchError, match="not an open_clip architecture"):
        load_clip("ViT-Q-99", "none")
    with pytest.raises(NightwatchError, match="neither a pretrained tag of nightwatch-tiny"):
        load_clip("nightwatch-tiny", "no_such_tag_or_file")
    with pytest.raises(NightwatchError, match="precision"):
        load_clip("nightwatch-tiny", "none", precision="fp8")


@pytest.mark.slow
def test_vit_b32_random_weights_builds_and_embeds():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        engine = load_clip("ViT-B-32", "none", device="cpu")
    assert engine.model_id == "ViT-B-32__none" and engine.dim == 512 and engine.image_size == 224
    v = engine.encode_images(_tiles(2, size=224))
    assert v.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
