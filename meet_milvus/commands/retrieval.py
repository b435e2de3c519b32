"""`meet-milvus load | search | eval`: codes into Milvus and queries through the cascade."""

COMMANDS: list = []
