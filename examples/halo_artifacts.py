"""HALO on the artifact world: Diffusion-DPO vs Gran-DPO from the same pre-trained video denoiser.

    python examples/halo_artifacts.py            # a few minutes on 2 CPU cores
    python examples/halo_artifacts.py --seed 1 --workdir runs/halo --json halo.json

Builds short clips of real Fashion-MNIST items (moving or zooming, 4 frames of 16x16) with
seeded local artifacts (blotches, tears, flicker), calibrates the teacher (per-patch artifact
energy), trains the video reward model and the patch reward model (fine-tuned from the video RM
with a drift penalty; its drift is measured and printed), pre-trains the denoiser with a recis
job (`model: {name: halo, objective: sft}`), writes preference pairs scored by the reward models
as Parquet, trains Diffusion-DPO and Gran-DPO jobs from the pre-trained checkpoint, samples clips
from the three denoisers and reports the teacher's patch-defect rate and the mean video reward
(teacher and video RM). Fashion-MNIST comes from Debian's dataset-fashion-mnist package
(recis.datasets.fashion_mnist, cached). See plugins/multimodal/README.md (HALO) for every option.
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout
    sys.path.insert(0, os.path.dirname(_HERE))
    sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "plugins", "multimodal"))

from recis_multimodal.halo.experiment import ExperimentConfig, run, table  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the jobs write (default: a temporary directory)")
    p.add_argument("--json", default=None, help="also write the measured numbers here")
    for f in dataclasses.fields(ExperimentConfig):
        if f.name != "seed" and f.type in ("int", "float", "Optional[float]"):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type == "int" else float, default=None)
    args = p.parse_args(argv)
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)
            if f.name != "seed" and getattr(args, f.name, None) is not None}
    cfg = ExperimentConfig(seed=args.seed, **over)
    with tempfile.TemporaryDirectory() as tmp:
        out = run(cfg, args.workdir or tmp)
    print()
    print(table(out["models"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
