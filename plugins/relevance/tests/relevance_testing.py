"""Tiny random encoders and a word list for the relevance tests (no downloads)."""

WORDS = (": , comedy horror drama romance action movies films from the not without but no year genre theme sequel "
         "1930s 1940s 1950s 1960s 1970s 1980s 1990s 1985 1988 1990 1995 1999 2000 toy story love war star").split()


def tiny_encoder(seed: int = 0, hidden: int = 32, layers: int = 2) -> dict:
    return {"config": {"model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers,
                       "num_attention_heads": 2, "intermediate_size": 2 * hidden, "vocab_size": 96,
                       "max_position_embeddings": 64}, "seed": seed}
