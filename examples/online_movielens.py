"""Online CTR on MovieLens-1M, end to end:

1. writes the stream (recis_online.ctr.stream): every rating in timestamp order, in windows of
   `--window-rows` ratings, labels flipped for half the primary genres from the middle on
   (`--no-shift`: none), into the directory that examples/online_movielens.yaml reads;
2. runs that job (`Job.train`, what `recis train` runs): the `online_logistic` tower, row-wise
   Adagrad on its tables, the adaptive BOGD_IP ensemble on its l1-constrained head, every batch
   scored before the update on it (trainer.prequential);
3. prints the cumulative prequential AUC / logloss and the windows around the shift.

    python examples/online_movielens.py                   # the full stream, a few minutes on 2 cores
    python examples/online_movielens.py --fraction 0.02 --preq-window 2000   # a 2% subsample, seconds
"""
import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE / "online_movielens.yaml"))
    p.add_argument("--fraction", type=float, default=1.0, help="share of the ratings replayed")
    p.add_argument("--window-rows", type=int, default=50_000, help="ratings per window directory")
    p.add_argument("--no-shift", action="store_true", help="replay the true labels (no planted shift)")
    p.add_argument("--stream-root", default=None, help="where to write the stream (default: the config's root)")
    p.add_argument("--preq-window", type=int, default=None,
                   help="examples per prequential window (default: the config's)")
    p.add_argument("--log-dir", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    args = p.parse_args(argv)

    from recis.run import Job, RunConfig
    from recis_online.ctr import StreamOptions, build_stream
    from recis_online.ctr.experiment import ensure_registered

    ensure_registered()
    cfg = RunConfig.from_yaml(args.config)
    if args.stream_root is not None:
        cfg.data.stream.root = args.stream_root
    options = StreamOptions(window_rows=args.window_rows, fraction=args.fraction,
                            shift_at=None if args.no_shift else 0.5)
    stream = build_stream(options, root=cfg.data.stream.root)
    print(f"stream {stream.root}: {stream.num_rows:,} ratings in {len(stream.windows)} windows; shift at row "
          f"{stream.shift_row} for {stream.shifted_genres}")
    for rule in cfg.optim.params:  # the horizon of a BOGD_IP head: this stream's rounds
        if "horizon" in rule.optimizer:
            rule.optimizer["horizon"] = -(-stream.num_rows // cfg.data.batch_size)
    if args.log_dir is not None:
        cfg.trainer.log_dir = args.log_dir
    if args.preq_window is not None:
        cfg.trainer.prequential_window = args.preq_window
    if args.max_steps is not None:
        cfg.trainer.max_steps = args.max_steps
    job = Job(cfg)
    result = job.train()
    logs = job.trainer.prequential.logs()
    print(f"prequential AUC {logs['preq_auc']:.4f}, logloss {logs['preq_logloss']:.4f} over "
          f"{int(logs['preq_examples']):,} examples ({result['train_examples_per_s']:,.0f} examples/s)")
    window = cfg.trainer.prequential_window
    for h in job.trainer.prequential_history:
        start = h["examples"] - window  # `examples`: scored up to the window's end
        mark = " <- shift" if stream.shift_row is not None and start <= stream.shift_row < h["examples"] else ""
        print(f"  window {h['window']:>3} (rows {start:>9,}+): AUC {h['auc']:.4f}, logloss {h['logloss']:.4f}{mark}")
    return {"result": result, "prequential": logs, "windows": job.trainer.prequential_history, "stream": stream}


if __name__ == "__main__":
    main()
