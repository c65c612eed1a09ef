"""GenAIR as a plain library, by stage family: `data`, `llm`, `item_space`, `recommenders`,
`report`; beside them what every family shares (settings, table schemas, losses, metrics, torch's
device, environment variables, progress events). No Prefect here."""
