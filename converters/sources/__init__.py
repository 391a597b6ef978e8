"""One module per source: a pure `to_sample(record, opts, resize_path) -> Sample`, its readers (I/O), and the
`register_source(...)` entry that makes it a subcommand (converters.registry imports every module here)."""
