"""The contestants of benchmarks/relevance_llm.py: every generative relevance method as one
pipeline entry (a list of stages, each a stage YAML of its example directory plus option
overrides), and the encoders (EBRM, the cross-encoder) of benchmarks/relevance_ebrm.py.

Stages are shared by name: SFT, DPO, GRPO, TaoSR1, AGRL, SHE and DyKnow all start from the same
SFT stage of a seed (trained once), and DyKnow on the DPO base starts from the DPO stage of the
SFT+DPO row, so methods differ only in the stages they add. Every judge stage gets the same small
Llama (the TaoSR1 example's, or `Settings.policy`), the same prompt and format, and the benchmark's
feature list; every post-SFT stage gets the same optimizer-step budget. A method whose stage
YAML, objective or pool code is not in this checkout is skipped with the reason (`missing`).
"""
from __future__ import annotations

import copy
import importlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXAMPLES = os.path.join(ROOT, "examples")

#: the pass-through columns of every judge stage (the prompt's fields, the rationale's query parts
#: and the retrieval test bed's chunk and context decision) and the grade label
FEATURES = {"features": [{"name": c, "kind": "passthrough", "column": c}
                         for c in ("query", "title", "year", "genres", "want_genre", "avoid_genre", "decade",
                                   "chunk", "context_decision")]
            + [{"name": "label", "kind": "label", "column": "label"}]}


@dataclass(frozen=True)
class Stage:
    """One stage of a seed's run: `yaml` (example dir / file, relative to examples/; None for a
    pool step), `init_from` (the stage whose checkpoint it starts from, or whose judge the pool
    step reads), `train` ("train": the task's training rows, or the name of a pool stage),
    `objective` (what the YAML trains, checked against judge_config.OBJECTIVES), `lr_key` (the
    Settings field of its learning rate), `kind` (job | pool: DyKnow's RL pool | curriculum: SHE's
    easy-to-hard bins by SFT pass rate), `part` (which file of a curriculum it trains on) and
    `budget` (its share of the post-SFT step budget: SHE's two curriculum stages have half each)
    and `keys` (the other Settings fields a validation sweep varies through it: its result, or the
    result of the stage it trains on, depends on them)."""

    name: str
    yaml: Optional[str]
    init_from: Optional[str] = None
    train: str = "train"
    objective: str = "sft"
    lr_key: Optional[str] = None
    kind: str = "job"
    dynamic: bool = False
    part: int = 0
    budget: float = 1.0
    keys: Tuple[str, ...] = ()

    @property
    def tuned(self) -> Tuple[str, ...]:
        """The Settings fields a sweep scores through this stage: its learning rate and `keys`."""
        return ((self.lr_key,) if self.lr_key else ()) + self.keys


@dataclass(frozen=True)
class Method:
    """A row of the table: the `stages` it needs (in order; the last one is the judge scored),
    the `prompts` it is scored under (the first is its row; the others are ablation rows) and its
    `label`. `kind` judge | encoder."""

    key: str
    label: str
    stages: Tuple[str, ...] = ()
    prompts: Tuple[str, ...] = ("with_context",)
    kind: str = "judge"


STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "taosr1_movielens/sft.yaml", lr_key="sft_lr"),
    Stage("dpo", "taosr1_movielens/dpo.yaml", "sft", objective="dpo", lr_key="dpo_lr"),
    Stage("grpo", "taosr1_movielens/grpo.yaml", "sft", objective="grpo", lr_key="grpo_lr"),
    Stage("taosr1", "taosr1_movielens/grpo.yaml", "dpo", objective="grpo", lr_key="grpo_lr", dynamic=True),
    Stage("agrl", "agrl_movielens/agrl.yaml", "sft", objective="agrl", lr_key="agrl_lr"),
    Stage("she_curriculum", None, "sft", kind="curriculum", objective="she"),
    Stage("she1", "she_movielens/she_stage1.yaml", "sft", train="she_curriculum", objective="she", lr_key="she_lr",
          part=0, budget=0.5),
    Stage("she2", "she_movielens/she_stage2.yaml", "she1", train="she_curriculum", objective="she", lr_key="she_lr",
          part=1, budget=0.5),
    Stage("pool", None, "sft", kind="pool", objective="dyknow", keys=("pool_threshold",)),
    Stage("dyknow_sft", "dyknow_movielens/dyknow.yaml", "sft", train="pool", objective="dyknow", lr_key="dyknow_lr",
          keys=("pool_threshold",)),
    Stage("dyknow_dpo", "dyknow_movielens/dyknow.yaml", "dpo", train="pool", objective="dyknow", lr_key="dyknow_lr",
          keys=("pool_threshold",)),
)}

METHODS: Dict[str, Method] = {m.key: m for m in (
    Method("sft", "SFT (with context)", ("sft",)),
    Method("dpo", "SFT+DPO", ("sft", "dpo")),
    Method("grpo", "GRPO (with context, SFT base)", ("sft", "grpo")),
    Method("taosr1", "TaoSR1 (SFT+DPO+GRPO-DS)", ("sft", "dpo", "taosr1")),
    Method("agrl", "TaoSR-AGRL", ("sft", "agrl")),
    Method("she", "TaoSR-SHE", ("sft", "she_curriculum", "she1", "she2")),
    Method("dyknow_sft", "DyKnow (SFT base)", ("sft", "pool", "dyknow_sft"), ("with_context", "no_context")),
    Method("dyknow_dpo", "DyKnow (DPO base)", ("sft", "dpo", "pool", "dyknow_dpo"), ("with_context", "no_context")),
    Method("ebrm_qe", "EBRM + QE pretraining", kind="encoder"),
    Method("ebrm", "EBRM", kind="encoder"),
    Method("cross_encoder", "cross-encoder", kind="encoder"),
)}
ENCODER_ENTRY = {"ebrm_qe": ("train_ebrm", {"qe_pretrain": True}), "ebrm": ("train_ebrm", {"qe_pretrain": False}),
                 "cross_encoder": ("train_cross_encoder", {})}


def _objectives() -> Tuple[str, ...]:
    from recis_relevance.judge_config import OBJECTIVES

    return tuple(OBJECTIVES)


def stage_missing(stage: Stage) -> Optional[str]:
    """Why a stage cannot run in this checkout (None: it can)."""
    if stage.kind in ("pool", "curriculum"):
        module, entry = (("recis_relevance.dyknow_stages", "write_rl_pool") if stage.kind == "pool" else
                         ("recis_relevance.she_curriculum", "curriculum_stages"))
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return f"{module} (the {stage.kind} step) is not in this checkout"
        return None if hasattr(mod, entry) else f"{module} has no {entry}"
    path = os.path.join(EXAMPLES, stage.yaml)
    if not os.path.isfile(path):
        return f"examples/{stage.yaml} is not in this checkout"
    if stage.objective not in _objectives():
        return f"model.objective {stage.objective!r} is not in this checkout (known: {list(_objectives())})"
    return None


def method_missing(method: Method) -> Optional[str]:
    """Why a method is skipped (None: it runs)."""
    if method.kind == "encoder":
        try:
            import relevance_ebrm as rb
        except ImportError as e:
            return f"benchmarks/relevance_ebrm.py does not import ({e})"
        entry = ENCODER_ENTRY[method.key][0]
        return None if hasattr(rb, entry) else f"relevance_ebrm.{entry} is not in this checkout"
    for name in method.stages:
        why = stage_missing(STAGES[name])
        if why:
            return f"stage {name}: {why}"
    return None


def stages_of(methods: Sequence[Method]) -> List[Stage]:
    """The stages the methods need, each once, in an order where every stage follows the ones it
    starts from or trains on."""
    out: List[str] = []

    def add(name: str) -> None:
        st = STAGES[name]
        for dep in (st.init_from, st.train if st.train != "train" else None):
            if dep is not None and dep not in out:
                add(dep)
        if name not in out:
            out.append(name)

    for m in methods:
        for name in m.stages:
            add(name)
    return [STAGES[n] for n in out]


def _policy(settings) -> Dict[str, Any]:
    if settings.policy is not None:
        return copy.deepcopy(settings.policy)
    import yaml

    with open(os.path.join(EXAMPLES, "taosr1_movielens", "sft.yaml")) as f:
        return yaml.safe_load(f)["model"]["policy"]


def stage_overrides(stage: Stage, settings, seed: int) -> Dict[str, Dict[str, Any]]:
    """The model / trainer / optim overrides of a stage (what makes the stages comparable)."""
    s = settings
    model: Dict[str, Any] = {"policy": {**_policy(s), "seed": seed}, "tokenizer": s.tokenizer, "prompt": s.prompt,
                             "format": s.format, "max_prompt_length": s.max_prompt_length,
                             "max_completion_length": s.max_completion_length,
                             "sampling": {"max_new_tokens": s.max_new_tokens}}
    trainer: Dict[str, Any] = {"seed": seed, "eval_every": None, "log_every": 50}
    lr = getattr(s, stage.lr_key) if stage.lr_key else None
    if stage.objective != "sft":
        model["sampling"] = {"group_size": s.group_size, "seed": seed, "temperature": 1.0,
                             "max_new_tokens": s.max_new_tokens}
        # the same budget for every post-SFT stage; the data repeat (up to `stage_epochs` passes) as needed
        trainer.update({"max_steps": max(1, round(s.stage_steps * stage.budget)), "epochs": s.stage_epochs})
    else:
        trainer["epochs"] = s.sft_epochs
    if stage.objective == "dpo":
        model["dpo"] = {"beta": s.dpo_beta}
    if stage.name in ("grpo", "taosr1"):
        model["grpo"] = {"loss_type": "grpo", "std": "trl", "epsilon_low": 0.2, "epsilon_high": 0.28,
                         "beta": s.grpo_beta, "inner_steps": 2}
        model["dynamic_sampling"] = ({"low": s.dynamic_low, "high": s.dynamic_high, "max_refills": s.max_refills}
                                     if stage.dynamic else None)
    if s.max_steps is not None:
        trainer["max_steps"] = s.max_steps
    return {"model": model, "trainer": trainer, "optim": {"dense": {"lr": lr}} if lr is not None else {}}


@dataclass
class SeedRun:
    """The stages of one seed: their jobs, wall seconds, and the pool files."""

    files: Any
    workdir: str
    seed: int
    jobs: Dict[str, Any] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    pools: Dict[str, List[str]] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)
    outdirs: Dict[str, str] = field(default_factory=dict)

    def adopt(self, name: str, other: "SeedRun") -> None:
        """Takes stage `name` as `other` trained it (a validation sweep shares the stages whose
        settings a trial does not change)."""
        for attr in ("jobs", "seconds", "pools", "info", "outdirs"):
            src = getattr(other, attr)
            if name in src:
                getattr(self, attr)[name] = src[name]


def stage_signature(name: str, settings) -> Tuple[Any, ...]:
    """What a stage's result depends on that a validation sweep varies: the swept settings of the
    stage (`Stage.tuned`) and of every stage it starts from or trains on (the other settings are
    fixed in a sweep)."""
    st = STAGES[name]
    own = (name,) + tuple(getattr(settings, k) for k in st.tuned)
    deps = tuple(stage_signature(d, settings) for d in (st.init_from, st.train if st.train != "train" else None)
                 if d is not None)
    return (own,) + deps


def run_stage_of(stage: Stage, settings, run: SeedRun, log: Callable[[str], None] = print) -> None:
    """Trains one stage of a seed (its dependencies already in `run`)."""
    from recis.run.stages import merge_options
    from recis_relevance.stages import SPEC_OPTIONS, TaskFiles, run_stage, stage_config

    out = os.path.join(run.workdir, stage.name)
    run.outdirs[stage.name] = out
    if stage.kind == "pool":
        from recis.rl import ConfidenceFilter
        from recis_relevance.dyknow_stages import write_rl_pool

        path = os.path.join(run.workdir, "data", f"{stage.name}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.perf_counter()
        pool = ConfidenceFilter(threshold=settings.pool_threshold, balance=settings.pool_balance,
                                per_stratum=settings.pool_per_stratum, seed=run.seed)
        run.info[stage.name] = write_rl_pool(run.jobs[stage.init_from].model, run.files.train, path, pool)
        run.seconds[stage.name] = time.perf_counter() - t0
        run.pools[stage.name] = [path]
        log(f"  {stage.name}: {run.info[stage.name]}")
        return
    if stage.kind == "curriculum":
        import pyarrow.parquet as pq

        from recis_relevance.she_curriculum import CurriculumConfig, curriculum_stages, sft_pass_rates

        parts = [s for s in STAGES.values() if s.train == stage.name]
        t0 = time.perf_counter()
        train = pq.read_table(run.files.train)
        rates = sft_pass_rates(run.jobs[stage.init_from].model, train, CurriculumConfig(seed=run.seed))
        run.pools[stage.name] = []
        for i, part in enumerate(curriculum_stages(train, rates, len(parts))):
            path = os.path.join(run.workdir, "data", f"{stage.name}{i + 1}.parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(part, path)
            run.pools[stage.name].append(path)
        run.seconds[stage.name] = time.perf_counter() - t0
        run.info[stage.name] = {"rows": [pq.read_metadata(p).num_rows for p in run.pools[stage.name]],
                                "mean_pass_rate": sum(rates) / max(len(rates), 1), "seconds": run.seconds[stage.name]}
        log(f"  {stage.name}: {run.info[stage.name]}")
        return
    o = stage_overrides(stage, settings, run.seed)
    extra = settings.stage_options.get(stage.name, {})
    model = merge_options(o["model"], extra.get("model", {}), replace=SPEC_OPTIONS)
    trainer = {**o["trainer"], **extra.get("trainer", {})}
    train = run.pools[stage.train][stage.part] if stage.train != "train" else run.files.train
    files = TaskFiles(train, run.files.val, run.files.test, run.files.counts)
    init = None if stage.init_from is None else os.path.join(run.outdirs[stage.init_from], "checkpoints")
    cfg = stage_config(os.path.join(EXAMPLES, stage.yaml), files, out, init_from=init, model=model, trainer=trainer,
                       optim=o["optim"], data={"seed": run.seed, **extra.get("data", {})})
    cfg.features = copy.deepcopy(FEATURES)
    done = run_stage(cfg)
    run.jobs[stage.name] = done["job"]
    run.seconds[stage.name] = float(done["result"].get("train_seconds", done["seconds"]))
    run.info[stage.name] = {"steps": done["result"].get("step"), "seconds": run.seconds[stage.name]}
    log(f"  {stage.name}: {run.info[stage.name]}")


def encoder_table(table, items, mode: str):
    """The task rows as an encoder reads them. mode 'context' [I]: `item_text` is the title and
    the retrieved chunk ("Toy Story (1995) | Toy Story (1995) is an ... film from 1995.") and the
    entities are those of the chunk's movie's genres with the item's own year and title words, so
    the encoders see what a with-context judge sees (and a noisy chunk misleads them too); 'full':
    the task's own columns (the genres shown)."""
    import pyarrow as pa

    from recis_relevance.task import extractor

    if mode == "full":
        return table
    genres = dict(zip(items["item_id"].to_pylist(), items["genres"].to_pylist()))
    ents = extractor()
    rows = table.select(["title", "year", "chunk", "chunk_item"]).to_pylist()
    text = [f"{r['title']} | {r['chunk']}" for r in rows]
    entities = [[e.text for e in ents.extract({"title": r["title"], "year": r["year"],
                                               "genres": genres[r["chunk_item"]]})] for r in rows]
    table = table.set_column(table.column_names.index("item_text"), "item_text", pa.array(text, pa.string()))
    return table.set_column(table.column_names.index("entities"), "entities",
                            pa.array(entities, pa.list_(pa.string())))


def train_encoder(method: Method, settings, files, items, workdir: str, seed: int) -> Dict[str, Any]:
    """One encoder method through relevance_ebrm's entry (epochs chosen on the validation rows
    there): {pred, true, train_seconds, epochs}."""
    import pyarrow.parquet as pq
    import relevance_ebrm as rb

    from recis_relevance.task import RelevanceTask, tiny_encoder_options

    os.makedirs(workdir, exist_ok=True)
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = os.path.join(workdir, f"{split}.parquet")
        pq.write_table(encoder_table(pq.read_table(getattr(files, split)), items, settings.encoder_input), paths[split])
    entry, fixed = ENCODER_ENTRY[method.key]
    options: Dict[str, Any] = dict(fixed)
    lr = (settings.encoder_lr or {}).get(method.key)
    if settings.encoder == "tiny":
        task = RelevanceTask(pq.read_table(paths["train"]), pq.read_table(paths["test"]))
        positions = max(64, settings.encoder_options.get("max_length", 0))
        options.update(tiny_encoder_options(task, seed, max_positions=positions), lr=lr or 1e-3, head_lr=lr or 1e-3)
    else:
        options["encoder"] = settings.encoder
        if lr is not None:
            options["lr"] = lr
    options.update(settings.encoder_options)
    return getattr(rb, entry)(paths["train"], paths["val"], paths["test"], os.path.join(workdir, "run"), seed=seed,
                              **options)
