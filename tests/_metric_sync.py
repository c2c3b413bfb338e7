"""What a rank of a 2-process metrics test writes: a metric's value before, with and after
`sync()`, and the error of syncing a metric configured differently on each rank."""
import json
import os
from typing import Any, Callable


def write_sync_report(metric, value: Callable[[Any], Any], odd, out_dir: str, rank: int) -> None:
    """`value(m)` reads `metric` (compute() or results()); `odd.sync()` must be refused."""
    local = value(metric)
    synced = value(metric.sync())
    restored = value(metric.unsync())
    try:
        odd.sync()
        mismatch = None
    except ValueError as e:
        mismatch = str(e)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"local": local, "synced": synced, "restored": restored, "mismatch": mismatch}, f)
