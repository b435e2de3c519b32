"""meet-milvus: MEET image-text retrieval as a Milvus plugin."""

from meet_milvus.config import Settings, load_settings
from meet_milvus.errors import MeetError

__all__ = ["MeetError", "Settings", "load_settings"]
