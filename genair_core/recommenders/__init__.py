"""Sequential recommenders: the backbones, a run's identity, inputs, training and scores, serving
today's catalog, ranking, and the cold-start evaluation."""
