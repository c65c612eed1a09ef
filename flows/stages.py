"""The pipeline's stages in order (no imports, so the CLI can list them before Prefect loads)."""

STAGES = (
    "ingest",
    "split",
    "cooccurrence",
    "archetypes",
    "pooling",
    "calibrate",  # the behavioural calibration adapter and calibrated_embeddings
    "index",  # FAISS indexes over the calibrated and the raw item vectors
    "retrieval",  # next-item retrieval in item space: raw, calibrated and behavioural baselines
    "negatives",
    "recommenders",
    "results",  # the results table over every configured run that has finished
)
