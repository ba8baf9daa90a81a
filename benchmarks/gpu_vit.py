"""``benchmarks.gpu``'s vit section: ``ImageClassifier(VisionConfig.vit_base(), num_classes=1000)``
against timm's ``vit_base_patch16_224`` with timm's weights copied into ours (fp32 logits checked
first): bf16 inference, and a training step (bf16 autocast, cross-entropy on random labels, fused
AdamW); and the issue's target, training >= 1.2x timm.

Shape legend: B batch, C channels or classes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.gates import max_abs
from benchmarks.gpu_bench import (
    FP32_TOL,
    LR,
    Bench,
    Row,
    Section,
    each,
    exact_fp32,
    free_memory,
    gated_rows,
    guarded,
    record,
    skip,
)
from benchmarks.gpu_report import log_rows, target, target_line
from benchmarks.measure import OURS, TRAIN_FLOPS_FACTOR, forward_flops
from benchmarks.peers import state_copy
from benchmarks.steps import adamw
from encoderkit import ImageClassifier, VisionConfig

TIMM_TOP = {
    "encoder.embeddings.cls_token": "cls_token",
    "encoder.embeddings.pos_embed": "pos_embed",
    "encoder.embeddings.proj.weight": "patch_embed.proj.weight",
    "encoder.embeddings.proj.bias": "patch_embed.proj.bias",
    "encoder.encoder.norm.weight": "norm.weight",
    "encoder.encoder.norm.bias": "norm.bias",
    "head.fc.weight": "head.weight",
    "head.fc.bias": "head.bias",
}
TIMM_LAYER = {  # ours under encoder.encoder.blocks.{i}. <- timm's under blocks.{i}.
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",  # both pack [W_q; W_k; W_v], heads contiguous within each
    "attn.proj": "attn.proj",
    "norm2": "norm2",
    "ff.fc1": "mlp.fc1",
    "ff.fc2": "mlp.fc2",
}
PROBES = {OURS: "encoder.encoder.blocks.0.attn.qkv.weight", "timm": "blocks.0.attn.qkv.weight"}
TRAIN_TARGET = 1.2  # encoderkit's training step over timm's


def timm_to_ours(state: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """timm VisionTransformer's state dict under ``ImageClassifier``'s names; ValueError naming
    the keys when timm's model has others than these."""
    names = dict(TIMM_TOP)
    for i in range(n_layers):
        for ours, theirs in TIMM_LAYER.items():
            for p in ("weight", "bias"):
                names[f"encoder.encoder.blocks.{i}.{ours}.{p}"] = f"blocks.{i}.{theirs}.{p}"
    missing = sorted(set(names.values()) - set(state))
    unused = sorted(set(state) - set(names.values()))
    if missing or unused:
        raise ValueError(f"timm's keys do not map: missing {missing[:6]}, unused {unused[:6]}")
    return {ours: state[theirs] for ours, theirs in names.items()}


def vit_forward_flops(config: VisionConfig, num_classes: int) -> int:
    """Forward FLOPs per image: the encoder on 1 + N tokens, the patch projection and the head."""
    n = config.num_patches
    encoder = forward_flops(config.n_layers, config.d_model, config.d_ff, [1 + n])
    patches = 2 * n * config.num_channels * config.patch_size**2 * config.d_model
    return encoder + patches + 2 * config.d_model * num_classes


def run_vit(b: Bench, section: Section) -> None:
    """encoderkit's ImageClassifier vs timm's ViT-B/16 on timm's weights: inference, training."""
    sz, dev = b.sizes, b.device
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {OURS: ImageClassifier(sz.vision, num_classes=sz.num_classes)}
    mapped = _add_timm(b, section, models)
    states = {name: state_copy(m) for name, m in models.items()}
    if mapped:
        with guarded(b, section, "ViT fp32 logits vs timm"):
            _check_vit_logits(b, section, models, states)
    g = torch.Generator().manual_seed(1)
    vc = sz.vision
    pixels = torch.randn(sz.vit_batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    labels = torch.randint(0, sz.num_classes, (sz.vit_batch,), generator=g).to(dev)
    for mode in ("infer", "train"):
        case = f"ViT {vc.image_size}/{vc.patch_size} batch {sz.vit_batch} {mode}"
        b.log(case)
        with guarded(b, section, case):
            train = mode == "train"
            rows = time_vit(b, section, case, train, models, states, pixels.to(dev), labels, mapped)
            section.rows += rows
            log_rows(b, rows)
            by_name = {r.contender: r for r in rows}
            if train and OURS in by_name and "timm" in by_name:
                ratio = by_name["timm"].median_ms / by_name[OURS].median_ms
                section.info["targets"] = [target(f"{case}: vs timm", ratio, TRAIN_TARGET)]
                b.log(target_line(section.info["targets"][0]).strip())
        free_memory(dev)
    del models, states
    free_memory(dev)


def _add_timm(b: Bench, section: Section, models: dict[str, nn.Module]) -> bool:
    """Build timm's model beside ours and copy its weights into ours; True when they fit."""
    if importlib.util.find_spec("timm") is None:
        section.notes.append("timm is not installed: its rows were skipped")
        skip(b, section, "timm rows", "timm is not installed")
        return False
    with guarded(b, section, "build timm vit_base_patch16_224"):
        import timm

        models["timm"] = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=b.sizes.num_classes,
            **b.sizes.timm_overrides,
        )
    if "timm" not in models:
        return False
    try:
        state = timm_to_ours(models["timm"].state_dict(), b.sizes.vision.n_layers)
        models[OURS].load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as e:
        note = f"timm's weights do not fit ours ({e}); timed on the same shapes, own weights"
        section.notes.append(note)
        b.log(f"  {note}")
        return False
    section.notes.append("timm's weights copied into encoderkit's ImageClassifier")
    b.log("  timm's weights copied into ours")
    return True


def _check_vit_logits(
    b: Bench,
    section: Section,
    models: Mapping[str, nn.Module],
    states: Mapping[str, Mapping[str, torch.Tensor]],
) -> None:
    vc, dev = b.sizes.vision, b.device
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(
        min(8, b.sizes.vit_batch), vc.num_channels, vc.image_size, vc.image_size, generator=g
    )
    logits = {}
    with exact_fp32(dev), torch.inference_mode():
        for name, m in models.items():
            m.to(dev, torch.float32).load_state_dict(states[name])
            logits[name] = m.eval()(pixels.to(dev))
    diff = max_abs(logits["timm"], logits[OURS])
    record(b, section, "ViT fp32 logits, timm vs ours", "max abs", diff, FP32_TOL)


def time_vit(
    b: Bench,
    section: Section,
    case: str,
    train: bool,
    models: Mapping[str, nn.Module],
    states: Mapping[str, Mapping[str, torch.Tensor]],
    pixels: torch.Tensor,
    labels: torch.Tensor,
    gate: bool,
) -> list[Row]:
    """bf16 inference or a bf16-autocast training step of each model on the same images; with
    ``gate`` (same weights), timm's logits and gradient are compared with ours first."""
    dtype = torch.float32 if train else torch.bfloat16
    for name, m in models.items():
        m.to(b.device, torch.float32).load_state_dict(states[name])
        m.to(dtype).eval()
    x = pixels.to(dtype)
    calls: dict[str, Callable[[], None]] = {}
    if not train:
        logits = each(b, section, case, models, lambda _, m: _vit_infer_once(m, x))
        grads: dict[str, torch.Tensor] = {}
        for name in logits:
            calls[name] = _vit_inference_call(models[name], x)
    else:
        optimizers = {name: adamw(m, LR) for name, m in models.items()}

        def once(name: str, m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return _vit_train_once(name, m, x, labels, optimizers[name])

        results = each(b, section, case, models, once)
        logits = {name: out for name, (out, _) in results.items()}
        grads = {name: grad for name, (_, grad) in results.items()}
        for name in results:
            models[name].train()
            calls[name] = _vit_training_call(models[name], x, labels, optimizers[name])
    flops = vit_forward_flops(b.sizes.vision, b.sizes.num_classes) * len(x)
    flops *= TRAIN_FLOPS_FACTOR if train else 1
    if not gate:  # not the same weights: nothing to compare
        logits, grads = {}, {}
    mode, per_call = ("train" if train else "infer"), (len(x), "img")
    return gated_rows(b, section, case, "logits", logits, grads, calls, mode, per_call, flops)


def _vit_infer_once(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _vit_train_once(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the first qkv weight's gradient under the training loss (eval mode, bf16
    autocast); the optimizer then steps, warming itself up."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float(), labels).backward()
    probe = model.get_parameter(PROBES[name])
    if probe.grad is None:
        raise RuntimeError(f"{name}: the loss gave no gradient to {PROBES[name]}")
    grad = probe.grad.detach().clone()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return logits.detach(), grad


def _vit_inference_call(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def _vit_training_call(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step
