"""The TaoSR-AGRL pipeline on the MovieLens relevance task as stage jobs: SFT (the post-CoT
rationale), then the AGRL stage from the SFT checkpoint (`checkpoint.init_from`). The stage YAMLs
are those of examples/agrl_movielens (sft.yaml, agrl.yaml; `STAGES`, in order). Used by
examples/agrl_movielens/run.py and the relevance benchmark:

    from recis_relevance.agrl_stages import run_pipeline
    done = run_pipeline("examples/agrl_movielens", files, "runs/agrl")          # both stages
    done = run_pipeline("examples/agrl_movielens", files, "runs/agrl", stages=("agrl",),
                        init_from="runs/grpo/sft/checkpoints")                    # from a shared SFT
    judge = done["agrl"]["job"].model

`files` are `recis_relevance.stages.write_task`'s; every override (`model`, `trainer`, `data`,
`optim`, and `overrides[stage]` for one stage) is applied as `recis_relevance.stages.stage_config`
applies it, and stage i's trainer seed is seed + i.
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from recis_relevance.stages import SPEC_OPTIONS, run_stage, stage_config

__all__ = ["STAGES", "stage_yamls", "run_pipeline"]

#: the stages of the pipeline, in order (each a YAML of the example directory)
STAGES = ("sft", "agrl")


def stage_yamls(example: str, stages: Sequence[str] = STAGES) -> List[Tuple[str, str]]:
    """[(stage, its YAML path)] of the example directory, in pipeline order."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown AGRL stage(s) {unknown} (known: {list(STAGES)})")
    out = [(s, os.path.join(str(example), f"{s}.yaml")) for s in STAGES if s in stages]
    missing = [p for _, p in out if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"AGRL stage YAML(s) {missing} not found (the example directory holds "
                                f"{', '.join(s + '.yaml' for s in STAGES)})")
    return out


def run_pipeline(example: str, files, out: str, stages: Sequence[str] = STAGES, init_from: Optional[str] = None,
                 seed: int = 0, model: Optional[Mapping[str, Any]] = None,
                 trainer: Optional[Mapping[str, Any]] = None, data: Optional[Mapping[str, Any]] = None,
                 optim: Optional[Mapping[str, Any]] = None,
                 overrides: Optional[Mapping[str, Mapping[str, Mapping[str, Any]]]] = None,
                 hooks: Optional[Mapping[str, Any]] = None) -> Dict[str, Dict]:
    """Runs `stages` in order under `out`/<stage> (each resumes its own checkpoints), the first from
    `init_from` (None: from scratch; give an SFT checkpoint directory to start at agrl) and each
    later one from the previous one's checkpoints. Returns {stage: {"job", "result", "seconds",
    "checkpoints"}}. `overrides` maps a stage to its own {"model"|"trainer"|"data"|"optim": {...}},
    applied over the common ones; `hooks` maps a stage to Trainer hooks (or a function job -> hooks,
    `recis.run.stages.run_stage`)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(STAGES))
    if unknown:
        raise ValueError(f"overrides for unknown AGRL stage(s) {unknown} (known: {list(STAGES)})")
    done: Dict[str, Dict] = {}
    previous = init_from
    for i, (stage, yaml_path) in enumerate(stage_yamls(example, stages)):
        own = overrides.get(stage, {})
        bad = sorted(set(own) - {"model", "trainer", "data", "optim"})
        if bad:
            raise ValueError(f"overrides[{stage!r}]: unknown section(s) {bad} (known: data, model, optim, trainer)")
        run_dir = str(Path(out) / stage)
        cfg = stage_config(yaml_path, files, run_dir, init_from=previous,
                           model=_merged(model, own.get("model")),
                           trainer={**(trainer or {}), "seed": seed + i, **own.get("trainer", {})},
                           data={**(data or {}), **own.get("data", {})}, optim=_merged(optim, own.get("optim")))
        result = run_stage(cfg, (hooks or {}).get(stage, ()))
        previous = os.path.join(run_dir, "checkpoints")
        done[stage] = {"job": result["job"], "result": result["result"], "seconds": result["seconds"],
                       "checkpoints": previous}
    return done


def _merged(common: Optional[Mapping[str, Any]], own: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """common updated by own, one level of option sections deep (``{"agrl": {...}}`` merges; a
    policy or tokenizer spec is replaced whole)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (common or {}).items()}
    for k, v in (own or {}).items():
        merge = k not in SPEC_OPTIONS and isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = {**out[k], **v} if merge else v
    return out
