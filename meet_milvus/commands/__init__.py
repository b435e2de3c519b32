"""Command groups of the `meet-milvus` CLI, one module per concern."""
