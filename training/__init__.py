"""MEET training (`meet-train`): objectives, losses, the trainer, checkpoints written.

Installed as `meet_milvus_training` (the folder is `training/`). It builds on the runtime's model
(`meet_milvus.model`: encoders, hash heads, PQ, reading checkpoints) and on the loaders; nothing
but its own CLI imports it.
"""
