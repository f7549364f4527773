"""Training loops, one per system: each takes a typed config and a run folder and returns metrics."""
