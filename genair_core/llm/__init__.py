"""The LLM stages: the archetype prompt, the engines that generate archetypes and their hidden
states, the archetype plan and backfill selection, and pooling into fixed-size item vectors."""
