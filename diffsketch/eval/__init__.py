"""Evaluation: score an extractor against an automatic style (:mod:`.run`), the metrics
(:mod:`.metrics`), BSDS500 files (:mod:`.bsds`) and benchmark-only reference networks
(:mod:`.baselines`)."""
