"""The bundled diffusion model: its weights, its judge, its evaluation and its spec."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from bitsfusion.errors import ConfigError  # noqa: E402
from bitsfusion.integrations.diffusers import PINS, TIME_LAYERS  # noqa: E402
from bitsfusion.zoo import digits as D  # noqa: E402
from bitsfusion.zoo import get_model_spec  # noqa: E402
from bitsfusion.zoo.digits_model import UNET_CONFIG, load_digits_split  # noqa: E402


def test_split_is_fixed_stratified_and_disjoint() -> None:
    data = load_digits_split()
    assert data["train_x"].shape == (1437, 1, 8, 8) and data["test_x"].shape == (360, 1, 8, 8)
    assert float(data["train_x"].min()) == -1.0 and float(data["train_x"].max()) == 1.0
    assert torch.bincount(data["test_y"]).min() >= 35
    train = {tuple(x.flatten().tolist()) for x in data["train_x"]}
    assert sum(tuple(x.flatten().tolist()) in train for x in data["test_x"]) <= 3  # sklearn has a few duplicates


def test_judge_classifies_the_held_out_digits() -> None:
    data = load_digits_split()
    with torch.no_grad():
        acc = float((D.judge()(data["test_x"]).argmax(1) == data["test_y"]).float().mean())
    assert acc >= 0.98  # measured 1.000 (scripts/train_digits_classifier.py)


def test_bundled_unet_has_stable_diffusions_layer_types() -> None:
    unet = D.build_digits()
    names = {n for n, _ in unet.named_modules()}
    for needle in ("conv_in", "conv_out", "time_embedding.linear_1", "down_blocks.0.resnets.0.time_emb_proj",
                   "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                   "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                   "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"):
        assert needle in names
    assert type(unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0")).__name__ == "GEGLU"
    assert list(unet.config["block_out_channels"]) == UNET_CONFIG["block_out_channels"]
    assert D.build_digits() is not unet  # a fresh copy per build


def test_frechet_distance_is_zero_on_itself_and_grows_with_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g)
    assert D.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + 1.0
    assert D.frechet_distance(a, b) == pytest.approx(8.0, rel=1e-4)  # |mu shift|^2, same covariance
    assert D.frechet_distance(a, b) == pytest.approx(D.frechet_distance(b, a), rel=1e-6)


@pytest.mark.slow
def test_fp32_samples_are_the_requested_digits(tmp_path) -> None:
    unet = D.build_digits()
    noise, labels = D.eval_noise(per_class=6)
    images = D.generate(unet, noise, labels)
    scores = D.image_scores(images, labels)
    assert scores["accuracy"] >= 0.9
    path = D.save_grid({"fp32": images, "copy": images}, labels, tmp_path / "g.png", per_class=6)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (2 * 6 * 34 + 3 * 12, 16 + 10 * 34 + 12)


def test_spec_skips_the_time_layers_and_pins_the_outer_convs() -> None:
    spec = get_model_spec("digits")
    assert spec.default_skip == TIME_LAYERS and spec.default_pins == PINS
    batches = spec.calibration(3)
    assert len(batches) == 3 and batches[0]["sample"].shape == (128, 1, 8, 8)
    assert [int(b["timestep"]) for b in batches] == [960, 480, 0]  # first, middle, last of DDIM-25
    with pytest.raises(ConfigError, match="1 to 25"):
        spec.calibration(0)
