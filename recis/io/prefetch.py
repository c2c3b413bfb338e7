"""Prefetch on a background thread, with pinned memory when CUDA is available.

The producer thread runs the wrapped iterable (reading, decoding, and a dataset's transform) up
to `depth` items ahead; the queue is bounded, so memory is too. Exceptions of the producer are
re-raised in the consumer. Breaking out of the loop stops and joins the thread.

Wrapping a recis.io dataset keeps its state exact: the thread produces (item, state) pairs and
the dataset's state advances only when the consumer receives an item, never for items produced
ahead; `Prefetcher.state_dict()` (or the dataset's) resumes after the last item received.

>>> import torch
>>> list(Prefetcher(iter([torch.ones(2), torch.zeros(2)]), depth=1))
[tensor([1., 1.]), tensor([0., 0.])]
"""
import queue
import threading
from typing import Iterable, Union

import torch

_ITEM, _END, _ERROR = 0, 1, 2


def resolve_pin_memory(pin_memory: Union[str, bool]) -> bool:
    """'auto' -> whether CUDA is available; True without CUDA is an error."""
    if pin_memory == "auto":
        return torch.cuda.is_available()
    if pin_memory is True and not torch.cuda.is_available():
        raise ValueError("pin_memory=True needs CUDA, which is not available; use pin_memory='auto' or False")
    if pin_memory not in (True, False):
        raise ValueError(f"pin_memory must be 'auto', True or False, got {pin_memory!r}")
    return pin_memory


def pin_memory(obj):
    """Tensors (also inside dicts, lists, tuples and named tuples, or objects with a pin_memory()
    method) copied into page-locked memory; anything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: pin_memory(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(pin_memory(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(pin_memory(v) for v in obj)
    if callable(getattr(obj, "pin_memory", None)):
        return obj.pin_memory()
    return obj


class Prefetcher:
    """Iterates `iterable` on a background thread, up to `depth` items ahead."""

    def __init__(self, iterable: Iterable, depth: int = 2, pin_memory: Union[str, bool] = "auto"):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"Prefetcher depth must be an int >= 1, got {depth!r}")
        self.iterable = iterable
        self.depth = depth
        self.pin = resolve_pin_memory(pin_memory)

    def __iter__(self):
        source = self.iterable
        if hasattr(source, "_start_stateful"):  # a recis.io dataset: keep its state exact
            return source._consume(self._threaded(source._start_stateful(), stateful=True))
        return self._threaded(iter(source), stateful=False)

    def state_dict(self) -> dict:
        """The wrapped dataset's state after the last item the consumer received."""
        if not hasattr(self.iterable, "state_dict"):
            raise TypeError(f"{type(self.iterable).__name__} has no state_dict()")
        return self.iterable.state_dict()

    def _threaded(self, it, stateful: bool):
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(target=_produce, args=(it, q, stop, self.pin, stateful),
                                  name="recis-io-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                kind, payload = q.get()
                if kind == _ITEM:
                    yield payload
                elif kind == _END:
                    return
                else:
                    raise payload
        finally:
            stop.set()
            while thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()


def _put(q: queue.Queue, stop: threading.Event, msg) -> bool:
    while not stop.is_set():
        try:
            q.put(msg, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(it, q: queue.Queue, stop: threading.Event, pin: bool, stateful: bool):
    try:
        for x in it:
            if pin:
                x = (pin_memory(x[0]),) + tuple(x[1:]) if stateful else pin_memory(x)
            if not _put(q, stop, (_ITEM, x)):
                return
        _put(q, stop, (_END, None))
    except BaseException as e:  # re-raised in the consumer
        _put(q, stop, (_ERROR, e))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
