"""One module per task: pure `to_sample(record, opts, resize_path) -> Sample` plus its readers (I/O)."""
