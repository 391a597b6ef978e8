"""Per-task metrics: pure functions over parsed answers (caption through pycocoevalcap)."""
