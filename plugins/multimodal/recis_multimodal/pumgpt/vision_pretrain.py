"""Self-supervised pre-training of the example's tiny ViT, so that the frozen vision encoder
carries image information [I] (ours; the paper uses a pre-trained CLIP-style encoder).

SimMIM-style masked image modelling on the train images, without labels: `transformers`'
``ViTForMaskedImageModeling`` replaces a random `mask_ratio` of the patches by its mask token
and reconstructs the pixels through a 1x1 conv + pixel shuffle decoder; the loss is the L1 error
on the masked pixels (the model's own loss). The encoder (a ``ViTModel`` with its pooler) is
saved as a transformers directory that `recis_multimodal.pumgpt.model.build_vision` loads and
the tower freezes.

The tower's `vision` option chooses among [I]:

- a directory written by `build_vision_dir` (the example's default: pre-trained, then frozen);
- ``{model_type: vit, ..., seed: N}``: random init, frozen (the image reaches the LM only through
  random features);
- either of them with ``pumgpt: {vision_trainable: true}``: the encoder trains with the adapters.

Images are normalised as the tower's image feature does (`mean`, `std` of the pixels / 255).

>>> import numpy as np
>>> images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
>>> model, losses = pretrain_vit(images, steps=2, batch_size=4)
>>> type(model).__name__, len(losses)
('ViTModel', 1)
"""
import json
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from recis_multimodal.pumgpt.catalogue import save_lm

__all__ = ["DEFAULT_VIT_CONFIG", "FASHION_MEAN", "FASHION_STD", "vit_config", "pretrain_vit", "build_vision_dir",
           "patch_mask"]

#: the example's ViT [I]: 28x28 grey images in 4x4 patches (49 tokens), 2 layers, hidden 64
DEFAULT_VIT_CONFIG = {"model_type": "vit", "image_size": 28, "patch_size": 4, "num_channels": 1,
                      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 128, "encoder_stride": 4}
#: Fashion-MNIST's pixel mean and std (/255) over the official train split (the image feature's)
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def vit_config(config: Optional[Mapping[str, Any]] = None):
    from transformers import ViTConfig

    cfg = {**DEFAULT_VIT_CONFIG, **dict(config or {})}
    if cfg.pop("model_type") != "vit":
        raise ValueError("vision pre-training supports model_type 'vit' only")
    return ViTConfig(**cfg)


def patch_mask(batch: int, patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """bool [batch, patches]: exactly round(ratio * patches) masked patches per image, at random."""
    k = int(round(ratio * patches))
    order = torch.rand(batch, patches, generator=generator).argsort(1)
    return torch.zeros(batch, patches, dtype=torch.bool).scatter_(1, order[:, :k], True)


def pretrain_vit(images: np.ndarray, config: Optional[Mapping[str, Any]] = None, steps: int = 300,
                 batch_size: int = 128, lr: float = 2e-3, mask_ratio: float = 0.5, seed: int = 0,
                 mean: float = FASHION_MEAN, std: float = FASHION_STD,
                 log_every: int = 50) -> Tuple[torch.nn.Module, List[float]]:
    """SimMIM pre-training on uint8 images [N, H, W] (no labels). Returns the encoder (a
    ``ViTModel`` with a pooler, eval mode) and the mean loss of each `log_every` window. The global
    RNG is left untouched."""
    from transformers import ViTForMaskedImageModeling, ViTModel

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) == 0:
        raise ValueError(f"pretrain_vit expects uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
    cfg = vit_config(config)
    side = cfg.image_size // cfg.patch_size
    history, window = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mim = ViTForMaskedImageModeling(cfg)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(mim.parameters(), lr=lr, weight_decay=0.05)
        pixels = (torch.from_numpy(images).float() / 255.0 - mean) / std
        mim.train()
        for step in range(steps):
            idx = torch.randint(len(pixels), (batch_size,), generator=gen)
            x = pixels[idx][:, None].expand(-1, cfg.num_channels, -1, -1)
            mask = patch_mask(batch_size, side * side, mask_ratio, gen)
            loss = mim(pixel_values=x, bool_masked_pos=mask).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            if len(window) == log_every or step == steps - 1:
                history.append(sum(window) / len(window))
                window = []
        encoder = ViTModel(cfg, add_pooling_layer=True)  # the pooler is seeded too: every load is identical
        state = {k: v for k, v in mim.vit.state_dict().items() if k != "embeddings.mask_token"}  # MIM only
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("pooler.") for k in missing):
            raise RuntimeError(f"ViT weights do not transfer: missing {missing}, unexpected {unexpected}")
    encoder.eval()
    return encoder, history


class _NoTokenizer:
    def save_pretrained(self, path):
        return None


def build_vision_dir(out: str, images: np.ndarray, config: Optional[Mapping[str, Any]] = None, steps: int = 300,
                     batch_size: int = 128, lr: float = 2e-3, mask_ratio: float = 0.5, seed: int = 0,
                     log=print, log_every: int = 50) -> str:
    """The pre-trained encoder in directory `out` (reused when it holds one trained with these
    settings on as many images). Returns `out`, a `vision` spec for the tower."""
    settings = {"config": {**DEFAULT_VIT_CONFIG, **dict(config or {})}, "steps": steps, "batch_size": batch_size,
                "lr": lr, "mask_ratio": mask_ratio, "seed": seed, "images": int(len(images)),
                "objective": "simmim"}
    stamp = Path(out) / "settings.json"
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in settings} == json.loads(json.dumps(settings)):
            log(f"vision encoder: reusing {out}")
            return str(out)
    t0 = time.perf_counter()
    model, history = pretrain_vit(images, config, steps, batch_size, lr, mask_ratio, seed, log_every=log_every)
    settings["loss_history"] = history
    settings["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"vision encoder: SimMIM on {len(images)} images, {steps} steps in {settings['seconds']} s, masked-pixel "
        f"L1 {history[0]:.3f} -> {history[-1]:.3f}")
    return save_lm(model, _NoTokenizer(), out, settings)
