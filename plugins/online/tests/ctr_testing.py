"""A small MovieLens stream for the online CTR tests (imported by the test modules as a fixture)."""
import pyarrow.parquet as pq
import pytest

from recis.datasets import movielens
from recis_online.ctr import StreamOptions, build_stream
from recis_online.ctr.experiment import ensure_registered

ROWS, WINDOW_ROWS = 6000, 1000


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory):
    """The first 6000 ratings of the random split's file, replayed in time order in 1000-row
    windows (the `online_logistic` tower registered)."""
    ensure_registered()
    ratings = pq.ParquetFile(movielens.load("random").train).read_row_group(0).slice(0, ROWS)
    return build_stream(StreamOptions(window_rows=WINDOW_ROWS), root=tmp_path_factory.mktemp("ctr") / "stream",
                        ratings=ratings)
