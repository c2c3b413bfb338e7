"""recis_online.ctr: online CTR on MovieLens-1M replayed in timestamp order (a stream of time
windows with an optional planted label shift), an online logistic tower over recis hash tables
with an l1-constrained linear head, and the prequential experiment comparing head optimizers."""
from recis_online.ctr.stream import (STREAM_SCHEMA, WINDOW_GLOB, StreamFiles, StreamOptions, build_stream,
                                     choose_genres, primary_genres, replay_order, shift_mask, stream_table)

__all__ = ["STREAM_SCHEMA", "WINDOW_GLOB", "StreamFiles", "StreamOptions", "build_stream", "choose_genres",
           "primary_genres", "replay_order", "shift_mask", "stream_table"]
