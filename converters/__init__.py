"""Dataset converters: source formats -> one internal Sample -> LLaMA-Factory sharegpt / ms-swift jsonl."""

__version__ = "0.2.0"
