"""Data: datasets mapped to canonical rows, validation, the time-ordered split, users' sequences,
co-occurrence, and the settings a dataset can be too small for."""
