"""Real and synthetic datasets for recis, as Parquet or streaming `pyarrow.dataset`s.

- `movielens`: MovieLens-1M ratings with user and movie features, random and by-time splits.
- `fashion_mnist`: Fashion-MNIST product images (PNG in Parquet) with attributes measured from
  the pixels; train/valid/test splits.
- `clothing_reviews`: Women's E-Commerce Clothing Reviews (text with catalogue fields), Parquet.
- `criteo`, `avazu`: readers and Parquet converters for the public CTR datasets' text formats.
- `synthetic`: a seeded, streaming Criteo-like generator with a planted logistic model.

See docs/datasets.md.
"""
from recis.datasets import avazu, clothing_reviews, criteo, fashion_mnist, movielens, synthetic
from recis.datasets._cache import cache_dir

__all__ = ["avazu", "cache_dir", "clothing_reviews", "criteo", "fashion_mnist", "movielens", "synthetic"]
