"""GenAIR as a plain library: config, datasets, preprocessing, co-occurrence (no Prefect here)."""
