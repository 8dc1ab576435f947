"""Diffusion sampling, trajectory calibration, Beta(3, 1) timesteps and the noise-distillation recipe."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_unet import make_unet
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.analysis import default_candidates, measure_sensitivity
from bitsfusion.errors import ConfigError
from bitsfusion.integrations.diffusers import (TIME_LAYERS, beta_timesteps, feature_blocks, final_image_run,
                                               noise_distill_recipe, noise_prediction, sample, trajectory_batches)
from bitsfusion.plan import BitPlan
from bitsfusion.train import DistillConfig, prepare
from bitsfusion.types import QScheme


def _cond(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 4, 16, generator=g), torch.randn(n, 4, 16, generator=g)


def test_sample_is_deterministic_and_guidance_changes_it(unet, ddim) -> None:
    noise, c, u = _cond(4)
    a = sample(unet, ddim, noise, c, u, steps=5, guidance=2.0)
    b = sample(unet, ddim, noise, c, u, steps=5, guidance=2.0, batch_size=3)  # chunked: same result
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert a.shape == noise.shape and torch.isfinite(a).all()
    assert not torch.allclose(a, sample(unet, ddim, noise, c, u, steps=5, guidance=1.0))
    with pytest.raises(ConfigError, match="same n"):
        sample(unet, ddim, noise, c[:2], steps=2)


def test_trajectory_batches_hold_what_the_sampler_feeds_the_unet(unet, ddim) -> None:
    noise, c, u = _cond(4)
    batches = trajectory_batches(unet, ddim, noise, c, u, steps=10, guidance=2.0, at=4)
    assert len(batches) == 4
    assert [int(b["timestep"]) for b in batches] == [int(ddim.timesteps[i]) for i in (0, 3, 6, 9)]
    first = batches[0]
    assert first["sample"].shape == (8, 1, 8, 8)  # both guidance halves
    torch.testing.assert_close(first["sample"][:4], noise * ddim.init_noise_sigma)
    torch.testing.assert_close(first["encoder_hidden_states"], torch.cat([u, c]))
    assert noise_prediction(unet, first).shape == (8, 1, 8, 8)
    no_cfg = trajectory_batches(unet, ddim, noise, c, steps=10, at=2)
    assert no_cfg[0]["sample"].shape == (4, 1, 8, 8)


def test_noise_prediction_sensitivity_skips_time_layers_and_grows_as_bits_fall(unet, ddim) -> None:
    noise, c, u = _cond(4)
    batches = trajectory_batches(unet, ddim, noise, c, u, steps=10, guidance=2.0, at=3)
    skip = BitPlan(default=QScheme(2), rules={r: None for r in TIME_LAYERS})
    table = measure_sensitivity(unet, batches, default_candidates((2, 8)), run=noise_prediction, loss="mse",
                                include=lambda n, _: skip.resolve(n) is not None, progress=False)
    assert "conv_in" in table.layers and not any("time_emb" in n for n in table.layers)
    for name, cells in table.loss.items():
        two, eight = cells["asym2/g64/als"], cells["asym8/g64/als"]
        assert two > eight >= 0, name


def test_final_image_run_is_a_whole_sampling_loop(unet, ddim) -> None:
    noise, c, u = _cond(2)
    run = final_image_run(ddim, steps=3, guidance=2.0)
    out = run(unet, {"noise": noise, "cond": c, "uncond": u})
    torch.testing.assert_close(out, sample(unet, ddim, noise, c, u, steps=3, guidance=2.0))


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 2000), n=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_beta_timesteps_stay_in_range(T: int, n: int, seed: int) -> None:
    t = beta_timesteps(n, T, torch.Generator().manual_seed(seed))
    assert t.shape == (n,) and t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= T - 1


def test_beta_timesteps_follow_beta_3_1() -> None:
    t = beta_timesteps(200_000, 1000, torch.Generator().manual_seed(0)).double() / 1000
    assert abs(float(t.mean()) - 0.75) < 0.005  # E = a / (a + 1)
    assert abs(float((t < 0.5).double().mean()) - 0.125) < 0.005  # P(u < 1/2) = (1/2)^3


def _recipe(stage: str = "distill", unet=None, ddim=None, **kw):
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.arange(40) % 4
    table = torch.randn(5, 4, 16, generator=g)
    encode = lambda y: table[y]  # noqa: E731
    return noise_distill_recipe(images, labels, encode, 4, ddim, stage=stage, batch_size=8,
                                features=feature_blocks(unet), **kw), images, labels


def test_recipe_batches_draw_the_same_for_teacher_and_student_and_drop_labels(unet, ddim) -> None:
    recipe, _, _ = _recipe(unet=unet, ddim=ddim, repeats=3)
    data = recipe.default_data()
    assert sorted(data) == sorted(list(range(40)) * 3)
    batches = recipe.batches(data)
    assert len(batches) == 15 and all(len(b["index"]) == 8 for b in batches)
    a, b = recipe.forward(unet, batches[0]), recipe.forward(unet, batches[0])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, recipe.forward(unet, batches[1]))
    assert feature_blocks(unet) == ("down_blocks.0", "down_blocks.1", "up_blocks.0", "up_blocks.1")


def test_recipe_drop_rate_and_stage_two_target(unet, ddim, monkeypatch) -> None:
    seen = []
    recipe, _, _ = _recipe(unet=unet, ddim=ddim, drop=0.25, repeats=50)
    wrapped = unet.forward

    def spy(x, t, encoder_hidden_states):
        seen.append(encoder_hidden_states)
        return wrapped(x, t, encoder_hidden_states=encoder_hidden_states)

    monkeypatch.setattr(unet, "forward", spy)
    for batch in recipe.batches(recipe.default_data())[:100]:
        recipe.forward(unet, batch)
    ehs = torch.cat(seen)
    g = torch.Generator().manual_seed(1)  # _recipe's draws: images, then the token table (row 4 = null)
    torch.rand(40, 1, 8, 8, generator=g)
    null_tokens = torch.randn(5, 4, 16, generator=g)[4]
    null = (ehs == null_tokens).all(dim=(1, 2)).double().mean()
    assert abs(float(null) - 0.25) < 0.04
    data_recipe, _, _ = _recipe("data", unet=unet, ddim=ddim)
    assert data_recipe.features == ()
    batch = data_recipe.batches(data_recipe.default_data())[0]
    out = data_recipe.forward(unet, batch)
    teacher_only = data_recipe.output_loss(out, torch.zeros_like(out), batch)
    assert float(teacher_only) != pytest.approx(float((out ** 2).mean()))  # target is the noise, not teacher_out
    with pytest.raises(ConfigError, match="stage"):
        _recipe("three", unet=unet, ddim=ddim)


def test_stage_one_distillation_brings_a_2_bit_unet_closer_to_the_teacher(ddim) -> None:
    teacher = make_unet()
    student = copy.deepcopy(teacher)
    prepare(student, BitPlan(default=QScheme(2), rules={r: None for r in TIME_LAYERS}), progress=False)
    recipe, _, _ = _recipe(unet=teacher, ddim=ddim, repeats=10)
    probe = recipe.batches(recipe.default_data())[:4]

    def gap() -> float:
        with torch.no_grad():
            return sum(float(((recipe.forward(student, b) - recipe.forward(teacher, b)) ** 2).mean()) for b in probe)

    before = gap()
    config = DistillConfig(steps=40, lr=1e-3, scale_lr=1e-2, warmup_steps=5)
    result = recipe.run(teacher, student, config=config, progress=False)
    assert result.steps == 40
    assert gap() < 0.8 * before
