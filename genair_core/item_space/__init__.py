"""The item space: the behavioural calibration adapter, FAISS indexes, and next-item retrieval in
each space."""
