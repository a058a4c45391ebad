"""Loading LongCat-Video weights: strict safetensors loading (single file or sharded) and LoRA merging.

A checkpoint's `dit/` folder holds `config.json` and either `diffusion_pytorch_model.safetensors` or shards listed
by `diffusion_pytorch_model.safetensors.index.json`. Every tensor must match the model by name and shape: a
missing, unexpected or mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from .config import DiTConfig

if TYPE_CHECKING:
    from .dit import LongCatVideoDiT

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
# LoRA module names encode the dots of a module path with this marker, after a "lora" prefix.
_LORA_PREFIX = "lora___lorahyphen___"
_LORA_DOT = "___lorahyphen___"


class CheckpointError(ValueError):
    """A checkpoint that does not match the model (missing, unexpected, mis-shaped or unreadable tensors)."""


def _name_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def weight_files(dit_dir: Path) -> dict[str, list[str]]:
    """Map each safetensors file of `dit_dir` to the tensor names the index assigns it (empty list: unindexed)."""
    index = dit_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
        files: dict[str, list[str]] = defaultdict(list)
        for name, file in weight_map.items():
            files[file].append(name)
        for file in files:
            if not (dit_dir / file).is_file():
                raise CheckpointError(f"{index} lists shard {file}, which is missing from {dit_dir}")
        return dict(files)
    if (dit_dir / WEIGHTS_NAME).is_file():
        return {WEIGHTS_NAME: []}
    raise CheckpointError(f"{dit_dir} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def iter_safetensors(path: Path, device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from one safetensors file, turning a corrupt file into a CheckpointError."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def load_state(
    dit_dir: Path, expected: dict[str, torch.Size], device: torch.device | str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Read every tensor of the checkpoint, checked against `expected` names and shapes, cast to dtype."""
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    misshaped: dict[str, str] = {}
    for file, indexed in weight_files(dit_dir).items():
        seen = set()
        for name, tensor in iter_safetensors(dit_dir / file, device):
            seen.add(name)
            if name not in expected:
                unexpected.append(name)
            elif tensor.shape != expected[name]:
                misshaped[name] = f"{name} {tuple(tensor.shape)} (model: {tuple(expected[name])})"
            else:
                state[name] = tensor.to(dtype)
        absent = [n for n in indexed if n not in seen]
        if absent:
            raise CheckpointError(f"shard {file} lacks tensors its index assigns to it: {_name_list(absent)}")
    missing = [n for n in expected if n not in state and n not in misshaped]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_name_list(unexpected)}")
    if misshaped:
        problems.append(f"tensors with the wrong shape: {_name_list(list(misshaped.values()))}")
    if problems:
        raise CheckpointError(f"checkpoint {dit_dir} does not match the model: " + "; ".join(problems))
    return state


@dataclass(frozen=True)
class LoRAModule:
    """One LoRA target: out += (up @ down) x * alpha_scale * multiplier, with `up` split into fused pieces."""

    module: str  # e.g. "blocks.0.attn.qkv"
    down: torch.Tensor  # [pieces * rank, in]
    ups: tuple[torch.Tensor, ...]  # pieces x [out / pieces, rank]
    alpha_scale: float

    def delta(self) -> torch.Tensor:
        """The weight update [out, in] in fp32 (before the multiplier)."""
        down = self.down.float()
        rank = down.shape[0] // len(self.ups)
        pieces = [up.float() @ down[i * rank:(i + 1) * rank] for i, up in enumerate(self.ups)]
        return torch.cat(pieces, dim=0) * self.alpha_scale


def read_lora(path: str | Path) -> list[LoRAModule]:
    """Parse a LongCat LoRA file (`<name>.lora_down.weight`, `.lora_up.weight` or `.lora_up.blocks.<k>.weight`,
    `.alpha_scale`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no LoRA file at {path}")
    tensors = dict(iter_safetensors(path))
    names = sorted(k[: -len(".lora_down.weight")] for k in tensors if k.endswith(".lora_down.weight"))
    if not names:
        raise CheckpointError(f"{path} holds no LoRA weights (no '*.lora_down.weight' tensors)")
    modules: list[LoRAModule] = []
    used: set[str] = set()
    for name in names:
        down_key = f"{name}.lora_down.weight"
        if f"{name}.lora_up.weight" in tensors:
            up_keys = [f"{name}.lora_up.weight"]
        else:
            up_keys = []
            while f"{name}.lora_up.blocks.{len(up_keys)}.weight" in tensors:
                up_keys.append(f"{name}.lora_up.blocks.{len(up_keys)}.weight")
        if not up_keys:
            raise CheckpointError(f"{path}: LoRA {name} has a down projection but no up projection")
        alpha_key = f"{name}.alpha_scale"
        alpha = float(tensors[alpha_key].float().item()) if alpha_key in tensors else 1.0
        if not name.startswith(_LORA_PREFIX):
            raise CheckpointError(f"{path}: LoRA name {name!r} lacks the '{_LORA_PREFIX}' prefix")
        module = name[len(_LORA_PREFIX):].replace(_LORA_DOT, ".")
        ups = tuple(tensors[k] for k in up_keys)
        if tensors[down_key].shape[0] % len(ups):
            raise CheckpointError(f"{path}: LoRA {name} down rank does not split into {len(ups)} pieces")
        modules.append(LoRAModule(module, tensors[down_key], ups, alpha))
        used.update([down_key, alpha_key, *up_keys])
    stray = [k for k in tensors if k not in used]
    if stray:
        raise CheckpointError(f"{path}: unexpected LoRA tensors: {_name_list(stray)}")
    return modules


@torch.no_grad()
def merge_lora(model: torch.nn.Module, lora: Sequence[LoRAModule], multiplier: float = 1.0) -> int:
    """Add each LoRA update into its Linear weight in place; returns the number of modules merged."""
    for item in lora:
        try:
            target = model.get_submodule(item.module)
        except AttributeError:
            raise CheckpointError(f"LoRA targets {item.module}, which the model does not have") from None
        if not isinstance(target, torch.nn.Linear):
            raise CheckpointError(f"LoRA targets {item.module}, which is not a Linear layer")
        delta = item.delta()
        if delta.shape != target.weight.shape:
            raise CheckpointError(
                f"LoRA update for {item.module} has shape {tuple(delta.shape)}, the weight {tuple(target.weight.shape)}"
            )
        merged = target.weight.float() + multiplier * delta.to(target.weight.device)
        target.weight.copy_(merged.to(target.weight.dtype))
    return len(lora)


def load_dit(
    cls: type[LongCatVideoDiT],
    dit_dir: Path,
    device: torch.device | str,
    dtype: torch.dtype,
    loras: Sequence[tuple[str | Path, float]] = (),
) -> LongCatVideoDiT:
    """Build the model on the meta device, load its tensors strictly onto `device`, merge LoRAs."""
    if not dit_dir.is_dir():
        raise CheckpointError(f"no DiT folder at {dit_dir}")
    config = DiTConfig.from_json(dit_dir / "config.json")
    model = cls.from_config(config, device="meta", dtype=dtype)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    state = load_state(dit_dir, expected, device, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    for path, multiplier in loras:
        merge_lora(model, read_lora(path), multiplier)
    return model.eval().requires_grad_(False)
