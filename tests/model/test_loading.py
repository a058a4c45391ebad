"""Strict checkpoint loading in the published folder layout, and LoRA merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from streamd.model.dit import LongCatVideoDiT
from streamd.model.loading import INDEX_NAME, WEIGHTS_NAME, CheckpointError, merge_lora, read_lora

from .conftest import make_dit, make_inputs


def save_sharded(model: LongCatVideoDiT, dit_dir: Path, shards: int = 3) -> dict[str, str]:
    """Write config.json + `shards` safetensors files + index.json, as the published checkpoint is laid out."""
    dit_dir.mkdir(parents=True)
    (dit_dir / "config.json").write_text(json.dumps({**model.config.to_dict(), "enable_flashattn3": False,
                                                     "_class_name": "LongCatVideoTransformer3DModel"}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(dit_dir / file))
        weight_map.update({n: file for n in part})
    (dit_dir / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def outputs(model: LongCatVideoDiT) -> torch.Tensor:
    _, latents, t, text, mask = make_inputs(model, 2, 2)
    return model(latents, t, text, mask, num_cond_latents=2)


def test_sharded_checkpoint_loads_strictly(tmp_path: Path) -> None:
    model = make_dit(seed=3)
    save_sharded(model, tmp_path / "dit")
    loaded = LongCatVideoDiT.from_pretrained(tmp_path / "dit", dtype=torch.float32)
    assert torch.equal(outputs(loaded), outputs(model))


def test_single_file_checkpoint_and_bf16(tmp_path: Path) -> None:
    model = make_dit(seed=4)
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "dit" / WEIGHTS_NAME))
    loaded = LongCatVideoDiT.from_pretrained(tmp_path / "dit", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    out = outputs(loaded)
    assert out.dtype == torch.float32
    assert float((out - outputs(model)).abs().max() / outputs(model).abs().max()) < 0.1


def rewrite_shard(dit_dir: Path, weight_map: dict[str, str], edit) -> None:
    file = dit_dir / weight_map["blocks.0.attn.qkv.weight"]
    from safetensors.torch import load_file

    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    weight_map = save_sharded(make_dit(), tmp_path / "dit")
    rewrite_shard(tmp_path / "dit", weight_map, lambda t: t.pop("blocks.0.attn.qkv.weight"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight"):
        LongCatVideoDiT.from_pretrained(tmp_path / "dit")


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    weight_map = save_sharded(make_dit(), tmp_path / "dit")

    def shrink(t: dict[str, torch.Tensor]) -> None:
        t["blocks.0.attn.qkv.weight"] = t["blocks.0.attn.qkv.weight"][:10].contiguous()

    rewrite_shard(tmp_path / "dit", weight_map, shrink)
    with pytest.raises(CheckpointError, match=r"wrong shape: blocks\.0\.attn\.qkv\.weight \(10, 96\)"):
        LongCatVideoDiT.from_pretrained(tmp_path / "dit")


def test_unexpected_tensor_is_named(tmp_path: Path) -> None:
    weight_map = save_sharded(make_dit(), tmp_path / "dit")
    rewrite_shard(tmp_path / "dit", weight_map, lambda t: t.update({"blocks.0.attn.bias_extra": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: blocks\.0\.attn\.bias_extra"):
        LongCatVideoDiT.from_pretrained(tmp_path / "dit")


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    weight_map = save_sharded(make_dit(), tmp_path / "dit")
    shard = tmp_path / "dit" / sorted(set(weight_map.values()))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read .*00002-of-00003"):
        LongCatVideoDiT.from_pretrained(tmp_path / "dit")
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing from"):
        LongCatVideoDiT.from_pretrained(tmp_path / "dit")
    with pytest.raises(CheckpointError, match="no DiT folder"):
        LongCatVideoDiT.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LongCatVideoDiT.from_pretrained(tmp_path / "empty")


RANK = 4


def lora_name(module: str) -> str:
    return "lora___lorahyphen___" + module.replace(".", "___lorahyphen___")


def make_lora(model: LongCatVideoDiT, path: Path) -> None:
    """A LoRA in the published format on every target of every block (fused qkv: 3 pieces, kv: 2)."""
    gen = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    pieces = {"attn.qkv": 3, "attn.proj": 1, "cross_attn.q_linear": 1, "cross_attn.kv_linear": 2,
              "cross_attn.proj": 1, "ffn.w1": 1, "ffn.w2": 1, "ffn.w3": 1}
    for i in range(model.config.depth):
        for target, n in pieces.items():
            layer = model.get_submodule(f"blocks.{i}.{target}")
            name = lora_name(f"blocks.{i}.{target}")
            tensors[f"{name}.lora_down.weight"] = torch.randn(n * RANK, layer.in_features, generator=gen) * 0.1
            if n == 1:
                tensors[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, RANK, generator=gen) * 0.1
            for k in range(n if n > 1 else 0):
                tensors[f"{name}.lora_up.blocks.{k}.weight"] = (
                    torch.randn(layer.out_features // n, RANK, generator=gen) * 0.1
                )
            tensors[f"{name}.alpha_scale"] = torch.tensor(0.5)
    save_file(tensors, str(path))


def test_lora_merged_at_load_equals_lora_at_run_time(tmp_path: Path) -> None:
    base = make_dit(seed=5)
    save_sharded(base, tmp_path / "dit")
    make_lora(base, tmp_path / "lora.safetensors")
    merged = LongCatVideoDiT.from_pretrained(tmp_path / "dit", dtype=torch.float32,
                                             loras=[(tmp_path / "lora.safetensors", 0.8)])

    # run time: out += up(down(x)) * alpha_scale * multiplier, with the fused up pieces applied to chunks
    handles = []
    for item in read_lora(tmp_path / "lora.safetensors"):
        layer = base.get_submodule(item.module)

        def add_lora(module, args, out, _item=item):
            hidden = torch.nn.functional.linear(args[0], _item.down)
            chunks = hidden.chunk(len(_item.ups), dim=-1)
            extra = torch.cat([torch.nn.functional.linear(c, up) for c, up in zip(chunks, _item.ups)], dim=-1)
            return out + extra * _item.alpha_scale * 0.8

        handles.append(layer.register_forward_hook(add_lora))
    try:
        runtime = outputs(base)
    finally:
        for h in handles:
            h.remove()
    plain = outputs(base)
    assert float((merged_out := outputs(merged)).sub(runtime).abs().max() / runtime.abs().max()) < 1e-5
    assert float((merged_out - plain).abs().max()) > 1e-2  # the LoRA really changed the model


def test_bad_lora_files(tmp_path: Path) -> None:
    model = make_dit()
    save_file({"something.weight": torch.zeros(2)}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(CheckpointError, match="no LoRA weights"):
        read_lora(tmp_path / "empty.safetensors")
    name = lora_name("blocks.9.attn.proj")
    save_file({f"{name}.lora_down.weight": torch.zeros(RANK, 96), f"{name}.lora_up.weight": torch.zeros(96, RANK)},
              str(tmp_path / "far.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.9\.attn\.proj"):
        merge_lora(model, read_lora(tmp_path / "far.safetensors"))
    with pytest.raises(CheckpointError, match="no LoRA file"):
        read_lora(tmp_path / "absent.safetensors")
