"""Time-embedding caching: outputs unchanged, the artifact round trip, and clear errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_unet import make_unet

from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.integrations.diffusers import TIME_LAYERS, cache_time_embeddings
from bitsfusion.nn import QLinear, load, quantize_, save
from bitsfusion.nn.time_cache import CachedTimeProjection, PassThrough, TimestepOneHot
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme


def _outputs(unet, timesteps, x, c):
    with torch.no_grad():
        return [unet(x, t, encoder_hidden_states=c).sample for t in timesteps]


def test_float32_tables_leave_every_output_unchanged(unet, ddim, inputs) -> None:
    x, c = inputs
    ref = _outputs(unet, ddim.timesteps, x, c)
    cached = copy.deepcopy(unet)
    report = cache_time_embeddings(cached, ddim.timesteps, dtype=torch.float32)
    assert report.timesteps == tuple(ddim.timesteps.tolist())
    resnets = [n for n, m in unet.named_modules() if hasattr(m, "time_emb_proj")]
    assert set(report.replaced) == {"time_proj", "time_embedding", *(f"{n}.time_emb_proj" for n in resnets)}
    assert report.removed_params == sum(p.numel() for n, p in unet.named_parameters()
                                        if n.startswith("time_embedding.") or ".time_emb_proj." in n)
    for a, b in zip(ref, _outputs(cached, ddim.timesteps, x, c)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # float32 rounding: the tables are one batch
    assert isinstance(cached.time_proj, TimestepOneHot) and isinstance(cached.time_embedding, PassThrough)
    assert all(isinstance(cached.get_submodule(f"{n}.time_emb_proj"), CachedTimeProjection) for n in resnets)


def test_float16_tables_change_outputs_by_float16_rounding_only(unet, ddim, inputs) -> None:
    x, c = inputs
    ref = _outputs(unet, ddim.timesteps, x, c)
    cached = copy.deepcopy(unet)
    report = cache_time_embeddings(cached, ddim.timesteps)
    channels = sum(m.time_emb_proj.out_features for m in unet.modules() if hasattr(m, "time_emb_proj"))
    assert report.table_bytes == 2 * channels * len(ddim.timesteps)
    for a, b in zip(ref, _outputs(cached, ddim.timesteps, x, c)):
        assert float((a - b).norm() / a.norm()) < 2e-3


def test_timesteps_given_as_ints_or_floats_or_batches(unet, ddim, inputs) -> None:
    x, c = inputs
    cached = copy.deepcopy(unet)
    cache_time_embeddings(cached, ddim.timesteps, dtype=torch.float32)
    t = int(ddim.timesteps[3])
    ref = _outputs(unet, [t], x, c)[0]
    for form in (t, float(t), torch.tensor(t), torch.full((3,), t)):
        torch.testing.assert_close(_outputs(cached, [form], x, c)[0], ref, rtol=1e-5, atol=1e-5)


def test_a_timestep_outside_the_cache_is_an_error_naming_the_cache(unet, ddim, inputs) -> None:
    x, c = inputs
    cache_time_embeddings(unet, ddim.timesteps)
    with pytest.raises(ConfigError, match=r"timestep\(s\) \[7\] are not in this UNet's time-embedding cache"):
        unet(x, 7, encoder_hidden_states=c)


def test_repeated_timesteps_are_cached_once(unet) -> None:
    """PNDM's ``set_timesteps`` repeats a timestep: caching its list as given must work."""
    report = cache_time_embeddings(unet, [751, 501, 501, 251, 1])
    assert report.timesteps == (751, 501, 251, 1)


def test_caching_twice_or_unsupported_unets_are_config_errors(unet, ddim) -> None:
    cache_time_embeddings(unet, ddim.timesteps)
    with pytest.raises(ConfigError, match="already cached"):
        cache_time_embeddings(unet, ddim.timesteps)
    with pytest.raises(ConfigError, match="class_embedding"):
        cache_time_embeddings(make_unet(num_class_embeds=10), ddim.timesteps)
    with pytest.raises(ConfigError, match="non-empty"):
        cache_time_embeddings(make_unet(), [])
    with pytest.raises(ConfigError, match="time_proj"):
        cache_time_embeddings(torch.nn.Linear(2, 2), [1])


@pytest.mark.parametrize("bits", [2, 4])
def test_quantized_cached_unet_round_trips_through_the_artifact(unet, ddim, inputs, tmp_path, bits) -> None:
    x, c = inputs
    quantize_(unet, BitPlan(default=QScheme(bits), rules={r: None for r in TIME_LAYERS}), progress=False)
    assert not any(isinstance(m, QLinear) for n, m in unet.named_modules() if "time_emb" in n)
    cache_time_embeddings(unet, ddim.timesteps)
    before = _outputs(unet, ddim.timesteps[:3], x, c)
    save(unet, tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "bitsfusion.json").read_text())
    assert set(manifest["cached_modules"]) >= {"time_proj", "time_embedding"}
    assert manifest["cached_modules"]["time_proj"] == {"type": "TimestepOneHot", "timesteps": 10}
    assert not any(k.startswith("time_embedding.") for k in manifest["tensors"])
    tables = [k for k in manifest["tensors"] if k.endswith(".time_emb_proj.table")]
    assert tables and all(manifest["tensors"][k]["dtype"] == "F16" for k in tables)
    loaded = load(tmp_path / "a")  # rebuilt from the diffusers class and config
    for a, b in zip(before, _outputs(loaded, ddim.timesteps[:3], x, c)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_a_corrupt_cached_module_entry_is_a_format_error(unet, ddim, tmp_path) -> None:
    cache_time_embeddings(unet, ddim.timesteps)
    save(unet, tmp_path / "a")
    mpath = tmp_path / "a" / "bitsfusion.json"
    manifest = json.loads(mpath.read_text())
    manifest["cached_modules"]["time_proj"] = {"type": "os.system"}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="names no module BitsFusion knows"):
        load(tmp_path / "a")
    manifest["cached_modules"]["time_proj"] = {"type": "TimestepOneHot"}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="malformed"):
        load(tmp_path / "a")
    manifest["cached_modules"] = {"no.such.module": {"type": "PassThrough"}}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="has no module in the model"):
        load(tmp_path / "a")


def test_a_diffusers_directory_resolves_to_its_unet(unet, tmp_path) -> None:
    from bitsfusion.zoo.resolve import resolve_model

    unet.save_pretrained(tmp_path / "unet")
    model, source, spec = resolve_model(str(tmp_path / "unet"))
    assert type(model).__name__ == "UNet2DConditionModel" and spec is None
    for a, b in zip(unet.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
