"""The PUMGPT tower (entry point ``pumgpt``): PUMGPT, or its prefix-token / text-only baselines,
trained by a YAML job (`recis.run`) on a product catalogue with images (Fashion-MNIST:
`recis.datasets.fashion_mnist`).

Each batch holds the image (``batch.tensors[image_feature]``, [B, C, H, W] from an image feature)
and the product's metadata as pass-through columns (``batch.extras``: item_id, category, shade,
coverage_band, ...). Training: per row one instruction of the configured `tasks` (or, with
probability `open_domain`, an open-domain question answered from the pixels), drawn by the
generator of `templates.row_rng(seed, salt, item_id)`. `salt` is drawn once per training batch
from the tower's generator, which the Trainer saves in its checkpoints, so a resumed job renders
the same instructions and the same product gets other patterns when it comes again [I] (the
tower does not see the epoch). The loss is the cross entropy of the answer tokens (eos included).

Evaluation (the batch's `label` is the class index 0..9):

- `predicted`: the category whose answer has the highest log-likelihood (sum over its tokens and
  the eos) under the category-QA prompt, among the ten categories, so
  ``metrics: {confusion: {labels: [0, ..., 9]}}`` reports the accuracy;
- `values` (the `tower` metric): ``category_correct`` (1 / 0) and ``attributes_exact``: 1 when the
  attribute-extraction answer is the greedy decoding of the model, i.e. when every answer token
  (eos included) is the argmax given the gold prefix (one teacher-forced pass, no sampling);
- the loss: the cross entropy of the gold category among the ten answers' log-likelihoods.

The tower has no binary logit (`has_logits = False`): a job evaluates it with `confusion` and
`tower` metrics (binary ones are refused).

The frozen LM (and a frozen vision encoder) are declared ``frozen`` with their sources: the
checkpoints hold their SHA-256 reference, never their weights. Trainable: the projector and the
current bank's adapters (pumgpt), the projector (prefix; sized to PUMGPT's trainable count by
`PrefixLM.matching`), or the whole LM (text_only, which has nothing else to train).

Task addition: a job with ``earlier_tasks: [category]`` and ``task: attributes`` builds the
earlier banks, then a new one (`PUMGPT.add_task` freezes the projector and the earlier banks),
starts from the earlier job's checkpoint (``checkpoint.init_from``; the new bank is absent there
and keeps its zero-gated init) and trains the new bank only: the earlier banks are left out of
the optimizer and come back bit-identical.
"""
import copy
from typing import Any, Dict, List, Mapping, Optional

import torch

from recis.towers import FeatureInfo, Tower, TowerOutput, resolve_model
from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer
from recis.towers.lm_tokens import encode_completions

from recis_multimodal.pumgpt.catalogue import METADATA_COLUMNS, catalogue_tokenizer
from recis_multimodal.pumgpt.model import PUMGPT, PrefixLM, TextOnlyLM, build_vision
from recis_multimodal.pumgpt.templates import (attribute_target, attributes_prompt, category_answers, category_prompt,
                                               image_facts, row_rng, sample_instruction)
from recis_multimodal.pumgpt.tower_config import PUMGPTTowerConfig

__all__ = ["PUMGPTTower", "MissingImageError"]


class MissingImageError(KeyError):
    """The image feature the tower reads is not in the batch / the feature config."""

    def __str__(self) -> str:
        return str(self.args[0])


def _image_features(features: FeatureInfo) -> Optional[List[str]]:
    tensors = getattr(features, "tensors", None)
    return None if tensors is None else list(tensors)


def _eos_id(model, tokenizer, pretrained: bool) -> int:
    """A pretrained model's generation-config eos (SmolLM2's GGUF tokenizer names another token its
    eos), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if pretrained else None
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"model.tokenizer {type(tokenizer).__name__} has no eos token (answers end at it)")
    return int(eos)


def _answer_logprobs(logits: torch.Tensor, ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """[N, T-1] log-probs of the answer tokens (0 elsewhere): logits at t predict token t + 1."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp * answer_mask[:, 1:]


class PUMGPTTower(Tower):
    """See the module docstring; options: `recis_multimodal.pumgpt.tower_config.PUMGPTTowerConfig`."""

    has_logits = False

    def __init__(self, config: Optional[PUMGPTTowerConfig] = None, **options):
        super().__init__()
        cfg = config if config is not None else PUMGPTTowerConfig.from_options(options)
        self.cfg = cfg
        spec = resolve_model(cfg.lm, needed=()) if isinstance(cfg.lm, str) else cfg.lm
        self.tokenizer = self._tokenizer(spec)
        if isinstance(spec, dict):  # an LM from a config: its vocabulary is the tokenizer's
            spec = {**spec, "config": {"vocab_size": len(self.tokenizer), **spec.get("config", {})}}
        lm, lm_source = load_causal_lm(spec)
        size = lm.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > size:
            raise ValueError(f"model.tokenizer has {len(self.tokenizer)} tokens but the LM {lm_source!r} embeds "
                             f"{size}: use the tokenizer the LM was trained with")
        self.eos_id = _eos_id(lm, self.tokenizer, pretrained=isinstance(spec, str))
        self.lm_source = lm_source
        self.net = self._build(lm, lm_source)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._answers = category_answers()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "PUMGPTTower":
        cfg = PUMGPTTowerConfig.from_options(args)
        images = _image_features(features)
        if cfg.variant != "text_only" and images is not None and cfg.image_feature not in images:
            raise MissingImageError(f"pumgpt reads the image feature {cfg.image_feature!r} (model.image_feature); "
                                    f"the feature config's image/tensor features are {images} (add {{name: "
                                    f"{cfg.image_feature}, kind: image, column: ...}})")
        if cfg.id_column not in features.passthrough:
            raise ValueError(f"pumgpt reads the product id column {cfg.id_column!r} (model.id_column) as a "
                             f"pass-through feature; the features' pass-through columns are "
                             f"{list(features.passthrough)}")
        return cls(cfg)

    def _tokenizer(self, spec):
        tok = self.cfg.tokenizer
        if tok == "catalogue":
            return catalogue_tokenizer()
        if tok is None:
            if not isinstance(spec, str):
                raise ValueError("model.tokenizer: an LM built from a config has no tokenizer of its own; give "
                                 "tokenizer: catalogue or a {words, reserved} spec")
            return load_lm_tokenizer(spec)
        return load_lm_tokenizer(resolve_model(tok, needed=()) if isinstance(tok, str) else tok)

    def _vision(self):
        return build_vision(self.cfg.vision, trainable=self.cfg.pumgpt.vision_trainable)

    def _build(self, lm, lm_source: str):
        cfg, pc = self.cfg, self.cfg.pumgpt
        if cfg.variant == "text_only":
            net = TextOnlyLM(lm, trainable=True)
            self.declare("lm", net.lm, "dense")
            return net
        vision = self._vision()
        if cfg.variant == "pumgpt":
            net = PUMGPT(lm, vision, pc)
            for name in cfg.earlier_tasks:
                net.add_task(name)
            net.add_task(cfg.bank)
        else:
            with torch.random.fork_rng(devices=[]):  # sizing only: a throwaway PUMGPT on copies
                probe = PUMGPT(copy.deepcopy(lm), copy.deepcopy(vision), pc)
                probe.add_task(cfg.bank)
                target = probe.trainable_share()[0]
                del probe
            net = PrefixLM.matching(lm, vision, trainable=target, num_visual_tokens=pc.num_visual_tokens,
                                    projector_heads=pc.projector_heads, vision_trainable=pc.vision_trainable)
        self.declare("lm", net.lm, "frozen", source=lm_source)
        if not net.vision.trainable:
            self.declare("vision", net.vision.model, "frozen", source=net.vision.source or "vision")
        trainable = [p for p in net.parameters() if p.requires_grad]
        self.declare("adapters" if cfg.variant == "pumgpt" else "projector", trainable, "dense")
        if cfg.earlier_tasks:  # the new bank is absent from the earlier task's checkpoint (init_from)
            ids = {id(p) for p in trainable}
            self._new_bank = {"net." + n for n, p in net.named_parameters() if id(p) in ids}
            self.register_load_state_dict_post_hook(_allow_missing_new_bank)
        return net

    @property
    def device(self) -> torch.device:
        return next(self.net.lm.parameters()).device

    def generators(self) -> Dict[str, torch.Generator]:
        return {"instructions": self.generator}

    def trainable_share(self):
        """(trainable parameters, all parameters, share) of the model."""
        return self.net.trainable_share()

    # ---- batches --------------------------------------------------------------------------
    def pixels(self, batch) -> torch.Tensor:
        """The image tensor [B, C, H, W] of the batch (a MissingImageError naming the feature)."""
        tensors = getattr(batch, "tensors", None) or {}
        name = self.cfg.image_feature
        if name not in tensors:
            raise MissingImageError(f"pumgpt: the batch has no image feature {name!r} (model.image_feature); its "
                                    f"image/tensor features are {sorted(tensors)}")
        x = tensors[name]
        if x.dim() != 4:
            raise ValueError(f"pumgpt: image feature {name!r} must be [B, C, H, W], got {list(x.shape)}")
        return x.to(self.device)

    def rows(self, batch) -> List[Dict[str, Any]]:
        """Per row the product's metadata (the pass-through columns of METADATA_COLUMNS the batch has)."""
        extras = getattr(batch, "extras", None) or {}
        if self.cfg.id_column not in extras:
            raise KeyError(f"pumgpt: the batch has no pass-through column {self.cfg.id_column!r} (model.id_column); "
                           f"its pass-through columns are {sorted(extras)}")
        cols = {}
        for c in dict.fromkeys((self.cfg.id_column, *METADATA_COLUMNS)):
            if c in extras:
                col = extras[c]
                cols[c] = col.to_pylist() if hasattr(col, "to_pylist") else list(col)
        n = len(cols[self.cfg.id_column])
        out = [{c: v[i] for c, v in cols.items()} for i in range(n)]
        for r in out:
            r["item_id"] = r[self.cfg.id_column]
        return out

    def encode(self, prompts: List[str], answers: List[str]) -> Dict[str, torch.Tensor]:
        enc = encode_completions(self.tokenizer, prompts, answers, self.cfg.max_prompt_length,
                                 self.cfg.max_answer_length, eos_token_id=self.eos_id)
        return {k: v.to(self.device) for k, v in enc.items()}

    def instructions(self, batch, rows, pixels, salt: int):
        """One instruction per row (see the module docstring)."""
        if self.cfg.open_domain > 0:
            for r, facts in zip(rows, image_facts(pixels)):
                r["image_facts"] = facts
        return [sample_instruction(r, self.cfg.tasks, row_rng(self.cfg.seed, salt, r["item_id"]),
                                   self.cfg.open_domain) for r in rows]

    # ---- forward --------------------------------------------------------------------------
    def forward(self, batch) -> TowerOutput:
        rows = self.rows(batch)
        pixels = self.pixels(batch) if self.cfg.variant != "text_only" else None
        if not self.training:
            return self.evaluate_batch(batch, rows, pixels)
        salt = int(torch.randint(0, 1 << 62, (1,), generator=self.generator))
        ins = self.instructions(batch, rows, pixels if pixels is not None else self.pixels_for_facts(batch), salt)
        enc = self.encode([i.prompt for i in ins], [i.answer for i in ins])
        logits = self.net(pixels, enc["input_ids"], enc["attention_mask"])
        logp = _answer_logprobs(logits, enc["input_ids"], enc["completion_mask"])
        tokens = enc["completion_mask"][:, 1:].sum()
        loss = -logp.sum() / tokens.clamp_min(1)
        stats = {"answer_nll": float(loss.detach()),
                 "open_domain_share": sum(i.open_domain for i in ins) / max(len(ins), 1)}
        return TowerOutput(loss=loss, stats=stats)

    def pixels_for_facts(self, batch) -> Optional[torch.Tensor]:
        """text_only: the image is only read for open-domain answers (never by the model)."""
        return self.pixels(batch) if self.cfg.open_domain > 0 else None

    def _logits(self, pixels, enc, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model's logits; `tokens`: visual tokens computed beforehand (one image's tokens serve
        all its candidate answers), used instead of running the vision encoder on `pixels` again."""
        if tokens is None or pixels is None:
            return self.net(pixels, enc["input_ids"], enc["attention_mask"])
        self.net.visual_tokens = lambda _: tokens  # an instance attribute shadows the method for this call
        try:
            return self.net(pixels, enc["input_ids"], enc["attention_mask"])
        finally:
            del self.net.visual_tokens

    @torch.no_grad()
    def category_scores(self, pixels: Optional[torch.Tensor], n: int) -> torch.Tensor:
        """[n, 10] log-likelihood of each category answer (sum over its tokens and eos) under the
        category-QA prompt."""
        answers = self._answers
        k = len(answers)
        out = []
        per = max(1, self.cfg.eval_chunk // k)
        for start in range(0, n, per):
            m = min(per, n - start)
            enc = self.encode([category_prompt()] * (m * k), answers * m)
            pix = tokens = None
            if pixels is not None:
                tokens = self.net.visual_tokens(pixels[start:start + m]).repeat_interleave(k, 0)
                pix = pixels[start:start + m].repeat_interleave(k, 0)
            logp = _answer_logprobs(self._logits(pix, enc, tokens), enc["input_ids"], enc["completion_mask"])
            out.append(logp.sum(-1).view(m, k))
        return torch.cat(out)

    @torch.no_grad()
    def attributes_exact(self, pixels: Optional[torch.Tensor], rows) -> torch.Tensor:
        """[B] 1.0 where greedy decoding under the attribute-extraction prompt writes the gold
        ``key: value`` answer (every answer token the argmax given the gold prefix)."""
        out = []
        per = self.cfg.eval_chunk
        for start in range(0, len(rows), per):
            part = rows[start:start + per]
            enc = self.encode([attributes_prompt()] * len(part), [attribute_target(r) for r in part])
            pix = None if pixels is None else pixels[start:start + len(part)]
            logits = self._logits(pix, enc)
            hit = logits[:, :-1].argmax(-1).eq(enc["input_ids"][:, 1:])
            mask = enc["completion_mask"][:, 1:].bool()
            out.append((hit | ~mask).all(-1).float())
        return torch.cat(out)

    def evaluate_batch(self, batch, rows, pixels) -> TowerOutput:
        labels = getattr(batch, "labels", None)
        if labels is None or isinstance(labels, dict):
            raise ValueError("pumgpt: evaluation needs one label column, the class index 0..9 (feature `label`)")
        gold = labels.to(self.device).round().long()
        if gold.numel() and (gold.min() < 0 or gold.max() >= len(self._answers)):
            raise ValueError(f"pumgpt: labels must be class indices 0..{len(self._answers) - 1}, found "
                             f"{sorted(set(gold.tolist()))[:5]}")
        scores = self.category_scores(pixels, len(rows))
        predicted = scores.argmax(-1)
        logp = torch.log_softmax(scores, -1).gather(1, gold[:, None]).squeeze(1)
        values = {}
        if "category_correct" in self.cfg.eval_values:
            values["category_correct"] = (predicted == gold).float()
        if "attributes_exact" in self.cfg.eval_values:
            values["attributes_exact"] = self.attributes_exact(pixels, rows)
        return TowerOutput(loss=-logp.mean(), predicted=predicted.float(), values=values,
                           outputs={"category_scores": scores})


def _allow_missing_new_bank(module: PUMGPTTower, incompatible) -> None:
    new = getattr(module, "_new_bank", set())
    keep = [k for k in incompatible.missing_keys if not any(k == n or k.endswith("." + n) for n in new)]
    incompatible.missing_keys[:] = keep
