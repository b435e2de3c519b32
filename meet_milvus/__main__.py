"""`python -m meet_milvus` runs the CLI."""

from meet_milvus.cli import main

main()
