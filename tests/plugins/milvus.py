"""Session fixture: the embedded Milvus server (see issue 2)."""
