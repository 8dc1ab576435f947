"""A Stable-Diffusion-1.5-sized UNet end to end: analysis, allocation, quantization, save, load, pipeline.

The UNet has SD-1.5's config (``UNet2DConditionModel`` with 320/640/1280/1280 channels and 768-wide
cross-attention, 859.5 M parameters) and seeded random weights; no checkpoint is downloaded. Latents are
8x8 (a 64x64 image) and there are two sampling steps, so the weights, not the activations, set the
memory and most of the time. The stages:

1. calibration batches: ``trajectory_batches`` on the float UNet (two timesteps of one sample);
2. analysis: a ``proxy:input_weighted`` table, and a measured ``mse`` table on three layers;
3. allocation: ``allocate`` at 4.0 stored bits per weight with ``PINS`` (conv_in/conv_out at 8 bits);
   ``TIME_LAYERS`` are skipped (they are cached, not quantized);
4. quantization of every other Linear/Conv2d, time-embedding caching for the scheduler's timesteps;
5. save; the artifact's bytes are checked against what the schemes promise;
6. load (rebuilt from the recorded diffusers class and config), ``pipe.unet = loaded``, sampling.

Why the proxy table does not cover every layer: the proxy reads each layer's input Hessian
``[K, K]``, accumulated in float64. Over SD-1.5's 282 layers that is 56.4 GB (the largest, up_blocks.0's
first conv with K = 2560 * 9, is 4.2 GB alone) and ``input_weighted`` costs ``N * K^2`` float64
multiply-adds per cell (8.3e12 per candidate: about 7 minutes per candidate on one core). The table
covers the layers whose Hessian is at most ``HESSIAN_BUDGET`` (K <= 1024: 130 layers, 62.5 M weights:
the attention projections at 320 and 640 channels, every cross-attention key/value, the 320/640-channel
1x1 convs, conv_in) plus the pinned conv_out; the other layers get ``FALLBACK``. A measured (``mse``)
table collects the same Hessians and pays a UNet pass per cell on top, so it is shown on three layers.
"""

from __future__ import annotations

import gc
import json
import resource
import time
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from bitsfusion.allocate import allocate  # noqa: E402
from bitsfusion.analysis import default_candidates, measure_sensitivity  # noqa: E402
from bitsfusion.integrations.diffusers import (  # noqa: E402
    PINS,
    TIME_LAYERS,
    cache_time_embeddings,
    noise_prediction,
    trajectory_batches,
)
from bitsfusion.nn import QConv2d, QLinear, load, quantize_, save  # noqa: E402
from bitsfusion.nn.time_cache import CachedTimeProjection, TimestepOneHot  # noqa: E402
from bitsfusion.pack.accounting import packed_nbytes  # noqa: E402
from bitsfusion.plan import BitPlan  # noqa: E402
from bitsfusion.types import QScheme  # noqa: E402

pytestmark = pytest.mark.slow

# SD-1.5's unet/config.json, as far as it differs from UNet2DConditionModel's defaults (and the
# channels spelled out for the reader).
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768, "block_out_channels": (320, 640, 1280, 1280),
             "attention_head_dim": 8, "layers_per_block": 2}
SD15_PARAMS = 859_520_964
# SD's scheduler settings (scheduler/scheduler_config.json), on DDIM.
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                "set_alpha_to_one": False, "steps_offset": 1}
STEPS = 2
GUIDANCE = 7.5
LATENT = (1, 4, 8, 8)  # a 64x64 image
TOKENS = 77
HESSIAN_BUDGET = 8 << 20  # float64 bytes of one layer's input Hessian, K * K * 8: K <= 1024
BITS = (2, 4, 8)
AVG_BITS = 4.0  # stored bits per weight (scales, zeros counted) over the table's layers
# min-max scales: ALS would cost ~2.5x the quantization time on 859 M weights
FALLBACK = QScheme(bits=4, group_size=64, grid="asymmetric", method="minmax")
MEASURED = ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k", "up_blocks.3.attentions.2.proj_out",
            "conv_out")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _centred_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.flatten().double(), b.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / (x.norm() * y.norm()))


def _pipeline(unet, scheduler):
    """A StableDiffusionPipeline around ``unet``: tiny random VAE and text encoder, no tokenizer.

    The prompts come as ``prompt_embeds``, so the tokenizer is never called and the text encoder only
    gives its dtype; the VAE only decodes (``output_type="np"``) and sets the 8x latent scale.
    """
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=100,
        projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1))
    pipe = diffusers.StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=None, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sd15_sized_unet_analyze_allocate_quantize_save_load_and_sample(tmp_path: Path) -> None:
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = now - clock
        clock = now

    rss0 = _peak_rss_bytes()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SD15_UNET).eval()
    assert sum(p.numel() for p in unet.parameters()) == SD15_PARAMS
    fp32_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER)
    pipe = _pipeline(unet, scheduler)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, TOKENS, 768, generator=g)  # stands for a prompt's CLIP embedding
    uncond = torch.randn(1, TOKENS, 768, generator=g)  # and the empty prompt's
    noise = torch.randn(LATENT, generator=g)

    def sample_latents(output_type: str = "latent") -> torch.Tensor:
        out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(), height=64, width=64,
                   num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type=output_type).images
        return torch.as_tensor(out)

    with torch.no_grad():
        float_latents = sample_latents()
    stage("build + float pipeline")

    # -- 1. calibration: the inputs the float UNet sees while sampling (the pipeline's own timesteps)
    batches = trajectory_batches(unet, scheduler, noise, cond, steps=STEPS, at=STEPS)
    assert [int(b["timestep"]) for b in batches] == scheduler.timesteps.tolist() == [501, 1]
    assert all(b["sample"].shape == LATENT for b in batches)

    # -- 2. analysis
    keep_time = BitPlan(default=FALLBACK, rules={rule: None for rule in TIME_LAYERS})

    def analysed(name: str, module: torch.nn.Module) -> bool:
        k = module.weight[0].numel()
        return keep_time.resolve(name) is not None and (k * k * 8 <= HESSIAN_BUDGET or name in PINS)

    candidates = default_candidates(BITS, grid="asymmetric", method="minmax", group_size=64)
    table = measure_sensitivity(unet, batches, candidates, run=noise_prediction, loss="proxy:input_weighted",
                                include=analysed, progress=False)
    stage("proxy table")
    assert table.metric == "proxy:input_weighted" and table.is_complete()
    assert set(PINS) <= set(table.layers) and len(table.layers) == 130
    assert not any(keep_time.resolve(n) is None for n in table.layers)  # no time-embedding layer
    assert any(n.endswith("attn2.to_k") for n in table.layers) and any(n.endswith("attn1.to_q") for n in table.layers)
    for name in table.layers:  # the layer's own relative output error falls with every bit
        cells = [table.cell(name, s) for s in candidates]
        assert cells[0] > cells[1] > cells[2] > 0, (name, cells)

    measured = measure_sensitivity(unet, batches[:1], default_candidates((2, 8), grid="asymmetric", method="minmax"),
                                   run=noise_prediction, loss="mse", include=lambda n, _: n in MEASURED,
                                   progress=False)
    stage("mse table")
    assert measured.metric == "mse" and list(measured.layers) == list(MEASURED) and measured.meta["replay"]
    for name in MEASURED:
        low, high = (measured.cell(name, s) for s in measured.schemes)
        assert low > 100 * high > 0, (name, low, high)
    assert set(measured.meta["proxy_spearman"]) == {"input_weighted", "hawq"}
    del measured
    gc.collect()

    # -- 3. allocation over the analysed layers; the rest at FALLBACK, the time layers float
    choice = allocate(table, avg_bits=AVG_BITS, pins=PINS)
    stage("allocate")
    assert choice.bits_per_weight <= AVG_BITS and choice.nbytes <= AVG_BITS * choice.params / 8
    assert choice.choices["conv_in"].bits == choice.choices["conv_out"].bits == 8
    assert {s.bits for s in choice.choices.values()} >= {2, 8}  # a real mix, not one width
    plan = BitPlan(default=FALLBACK, rules={**{rule: None for rule in TIME_LAYERS}, **choice.plan().rules})

    # -- 4. quantization and time-embedding caching
    layers = {n: m for n, m in unet.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)}
    expect = {n: plan.resolve(n) for n in layers}
    report = quantize_(unet, plan, progress=False)
    stage("quantize")
    assert not report.warnings
    assert {q.fqn for q in report.quantized} == {n for n, s in expect.items() if s is not None}
    time_layers = {s.fqn for s in report.skipped if s.reason == "plan keeps it float"}
    assert len(time_layers) == 24 and all(keep_time.resolve(n) is None for n in time_layers)
    for q in report.quantized:
        assert q.scheme == expect[q.fqn]
    packed = sum(packed_nbytes(expect[q.fqn], q.shape) for q in report.quantized)
    assert report.totals()["packed_bytes"] == packed
    bits = report.totals()["bits_per_weight"]
    assert 4.0 < bits < 4.5  # FALLBACK's 4.5 on most weights, the analysed ones cheaper on average
    del layers

    scheduler.set_timesteps(STEPS)
    cached = cache_time_embeddings(unet, scheduler.timesteps)
    assert cached.timesteps == (501, 1) and len(cached.replaced) == 2 + 22
    with torch.no_grad():
        quantized_latents = sample_latents()
    stage("cache + quantized pipeline")

    # -- 5. save: the bytes on disk are the bytes the schemes promise
    path = save(unet, tmp_path / "sd15-unet", source={"test": "sd15"})
    stage("save")
    manifest = json.loads((path / "bitsfusion.json").read_text())
    acct = manifest["accounting"]
    assert acct["packed_bytes"] == packed and acct["quantized_params"] == sum(
        q.shape[0] * q.shape[1] for q in report.quantized)
    assert set(manifest["cached_modules"]) == set(cached.replaced)
    weights = (path / "model.safetensors").stat().st_size
    assert 0 <= weights - acct["total_bytes"] < 1 << 20  # the safetensors header only
    assert acct["total_bytes"] < 0.15 * fp32_bytes  # about 4.4 bits per parameter, not 32
    del unet, report
    pipe.unet = None
    gc.collect()

    # -- 6. load (from the recorded class and config) and sample with it
    loaded = load(path)
    stage("load")
    assert type(loaded) is diffusers.UNet2DConditionModel
    assert isinstance(loaded.conv_in, QConv2d) and isinstance(loaded.conv_out, QConv2d)
    assert isinstance(loaded.mid_block.attentions[0].transformer_blocks[0].attn2.to_k, QLinear)
    assert isinstance(loaded.time_proj, TimestepOneHot)
    assert isinstance(loaded.down_blocks[0].resnets[0].time_emb_proj, CachedTimeProjection)
    in_memory = sum(t.numel() * t.element_size() for t in loaded.state_dict().values())
    assert in_memory == acct["total_bytes"]  # the loaded UNet is as small as the artifact
    pipe.unet = loaded
    with torch.no_grad():
        loaded_latents = sample_latents()
        image = sample_latents("np")
    stage("loaded pipeline")

    assert loaded_latents.shape == LATENT and torch.isfinite(loaded_latents).all()
    torch.testing.assert_close(loaded_latents, quantized_latents)  # the artifact is the quantized model
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    # Two DDIM steps from the same noise: what the UNets changed, not the shared noise, is compared.
    start = noise * scheduler.init_noise_sigma
    corr = _centred_correlation(loaded_latents - start, float_latents - start)
    rel = float((loaded_latents - float_latents).norm() / (float_latents - start).norm())
    assert corr > 0.9 and rel < 0.5, (corr, rel)

    growth = _peak_rss_bytes() - rss0
    print(f"\nSD-1.5 UNet ({SD15_PARAMS:,} params, fp32 {fp32_bytes / 1e9:.2f} GB): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
          + f"; total {sum(times.values()):.1f} s; peak RSS {_peak_rss_bytes() / 1e9:.2f} GB "
          f"(+{growth / 1e9:.2f} GB in this test); artifact {weights / 1e6:.0f} MB at {bits:.3f} bits per weight; "
          f"latent update vs float: correlation {corr:.4f}, relative error {rel:.3f}")
    assert growth < 2 * fp32_bytes  # the float model plus transients, never a float64 copy of it
