"""One settings object for every command: CLI flags > environment (MEET_*) > TOML > defaults."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from meet_milvus.errors import ParameterError

DEFAULT_HOME = Path(os.environ.get("MEET_HOME", Path.home() / ".meet-milvus"))
CONFIG_FILE_ENV = "MEET_CONFIG"
# The user's own config file; never one in the current directory, where a cloned repository
# could plant settings (a cache_dir holding a binary of its making).
USER_CONFIG_FILE = DEFAULT_HOME / "meet-milvus.toml"
CWD_CONFIG_FILE = Path("meet-milvus.toml")
# scheme://user:password@host -> scheme://***@host, anywhere in a text; the user info runs to
# the last "@" before the host (a password may hold one).
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@", re.IGNORECASE)


def redact_uri(text: str) -> str:
    """`text` with the credentials of every URI in it (http://user:pass@host) masked."""
    return _USERINFO.sub(r"\1***@", text)


class Settings(BaseSettings):
    """Where Milvus is, where data and models live, and which device computes."""

    model_config = SettingsConfigDict(env_prefix="MEET_", extra="forbid", validate_default=True)

    milvus_uri: str | None = Field(
        None, description="Milvus URI (http://host:19530); empty means the embedded server"
    )
    milvus_token: SecretStr = Field(
        SecretStr(""), description="Milvus token or user:password (embedded: the stored one)"
    )
    milvus_db: str = Field("default", description="Milvus database name")
    embedded_port: int = Field(19530, ge=1, le=65535, description="port of the embedded Milvus")
    data_dir: Path = Field(DEFAULT_HOME / "data", description="data sets and Milvus data")
    cache_dir: Path = Field(DEFAULT_HOME / "cache", description="downloads and feature caches")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    text_model: Path | None = Field(
        None, description="BERT-family checkpoint dir (default: the offline all-MiniLM-L6-v2)"
    )
    checkpoint: Path | None = Field(None, description="trained MEET checkpoint directory")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="level of the embedded Milvus's log"
    )
    embedded_network: Literal["isolated", "host"] = Field(
        "isolated",
        description="isolated: the embedded Milvus gets a network of its own, only its port on "
        "127.0.0.1 reaches it; host: it listens on all interfaces (Milvus 2.3.5 cannot bind one)",
    )
    embedded_host_network_confirmed: bool = Field(
        False,
        description='confirms embedded_network = "host", which exposes Milvus\'s internal ports '
        "and its password-free cluster-member access to the network",
    )
    embedded_gc_interval: int = Field(
        300, ge=10, le=86400, description="seconds between the embedded Milvus's file collections"
    )
    embedded_gc_drop_tolerance: int = Field(
        600, ge=0, le=604800, description="seconds a dropped collection's files stay on disk"
    )
    embedded_mmap: bool = Field(
        False,
        description="the embedded Milvus maps loaded collections from files under the data dir "
        "(queryNode.mmapDirPath): its anonymous memory holds little of a gallery, the rest is "
        "page cache the kernel can reclaim; takes effect when the server starts",
    )

    @property
    def maps_segments(self) -> bool:
        """Whether the server is the embedded one, mapping loaded segments from files."""
        return self.embedded_mmap and self.milvus_uri is None

    @field_validator("milvus_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not (v.startswith(("http://", "https://", "tcp://", "unix:")) or v.endswith(".db")):
            raise ValueError("must look like http://host:19530")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")

    @field_validator("embedded_port", "embedded_gc_interval", "embedded_gc_drop_tolerance",
                     mode="before")  # fmt: skip
    @classmethod
    def _not_bool(cls, v: Any) -> Any:
        # pydantic takes true as 1: `embedded_port = true` would become port 1.
        if isinstance(v, bool):
            raise ValueError("must be a whole number, not true/false")
        return v

    @field_validator("data_dir", "cache_dir", "text_model", "checkpoint", mode="before")
    @classmethod
    def _path(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str) and "\0" in v:
            raise ValueError("a path cannot hold a NUL character")
        if isinstance(v, str) and not v.strip():  # "" would mean the current directory
            if info.field_name in ("text_model", "checkpoint"):
                return None
            raise ValueError("must be a directory, not empty")
        return v

    @field_validator("data_dir", "cache_dir", "text_model", "checkpoint")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser()

    @field_serializer("milvus_uri", when_used="json")
    def _uri_out(self, v: str | None) -> str | None:
        # JSON is for showing and logging: the URI's password stays out (model_dump keeps it,
        # to copy settings).
        return redact_uri(v) if v else v

    def __repr_args__(self) -> Any:
        # The token is a SecretStr already; a URI may carry user:password too.
        for name, value in super().__repr_args__():
            yield name, redact_uri(value) if name == "milvus_uri" and value else value

    @property
    def embedded(self) -> bool:
        """True when no URI is configured and the embedded server is used."""
        return self.milvus_uri is None

    @property
    def milvus_dir(self) -> Path:
        return self.data_dir / "milvus"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the CLI flags and the TOML file's values, merged in load_settings.
        return (init_settings, env_settings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        if path.exists() and not path.is_file():  # a directory, or /dev/zero: never ends
            raise ParameterError(f"config file {path}: not a regular file")
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ParameterError(f"config file {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ParameterError(f"config file {path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ParameterError(f"config file {path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ParameterError(f"config file {path}: not valid TOML (nested too deeply)") from None
    # Accept a [meet] table or top-level keys.
    table = data.get("meet", data)
    if not isinstance(table, dict):
        raise ParameterError(f"config file {path}: 'meet' must be a table ([meet])")
    return table


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `overrides` (CLI flags; None = unset) > MEET_* env > TOML > defaults."""
    path = config_file or os.environ.get(CONFIG_FILE_ENV)
    if path is None and USER_CONFIG_FILE.is_file():
        path = USER_CONFIG_FILE
    elif path is None and CWD_CONFIG_FILE.is_file():
        print(
            f"note: ./{CWD_CONFIG_FILE} is not read (settings come from --config, "
            f"{CONFIG_FILE_ENV} or {USER_CONFIG_FILE}); pass --config {CWD_CONFIG_FILE} to use it",
            file=sys.stderr,
        )
    file_values = _read_toml(Path(path)) if path else {}
    env_keys = {k[5:].lower() for k in os.environ if k.upper().startswith("MEET_")}
    # The environment outranks the file: drop file values the environment sets.
    values = {k: v for k, v in file_values.items() if k not in env_keys}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        source = f" (from {path})" if path and name in file_values else ""
        message = err["msg"].removeprefix("Value error, ")
        raise ParameterError(f"setting '{name}'{source}: {message}") from None


def resolve_device(device: str = "auto") -> str:
    """The torch device string for a setting: 'auto' picks cuda when present."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
