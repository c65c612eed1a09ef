"""The pipeline's stages in order (no imports, so the CLI can list them before Prefect loads)."""

STAGES = (
    "ingest",
    "split",
    "cooccurrence",
    "archetypes",
    "pooling",
    "negatives",
    "recommenders",
    "results",  # the results table over every configured run that has finished
)
