"""What the embedded Milvus is told: its ports, its etcd root, and the milvus.yaml, glog.conf and
embedEtcd.yaml made from the package's templates (all 0600, in the milvus dir's configs/)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from meet_milvus.config import Settings
from meet_milvus.errors import ServerUnavailableError
from meet_milvus.files import private_dir, read_record, write_private
from meet_milvus.server.binaries import package_dir
from meet_milvus.server.processes import DEFAULT_ETCD_ROOT, free_ports, port_free

_GRACEFUL_STOP_S = 5  # Milvus's own limit on its graceful stop
_ETCD_ROOT = re.compile(r"by-dev|meet-[0-9a-f]{32}")
# The ports besides the proxy's: placeholders of the package's config template, then ours.
PORT_KEYS = (
    "etcd_port",
    "root_coord_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "etcd_peer_port",
    "metrics_port",
)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*(?:\(\w+\))?\s*(?::\s*([^}]*?))?\s*\}\}")
# settings.log_level -> Milvus's log.level, embedded etcd's level, glog's --minloglevel.
_LOG_LEVELS = {
    "debug": ("debug", "info", 0),
    "info": ("info", "warn", 0),
    "warning": ("warn", "warn", 1),
    "error": ("error", "error", 2),
}


def choose_ports(directory: Path, proxy_port: int) -> dict[str, int]:
    """The ports of the last run where still free, else new free ones.

    Stable ports help when a stop could not drop the components' sessions (a crash): etcd
    keeps their addresses until their leases expire, and a restart on other ports waits.
    """
    saved_file = directory / "ports.json"
    saved = read_record(saved_file)
    kept = {
        k: saved[k] for k in PORT_KEYS if isinstance(saved.get(k), int) and saved[k] != proxy_port
    }
    kept = {k: v for k, v in kept.items() if port_free(v)}
    missing = [k for k in PORT_KEYS if k not in kept]
    taken = {*kept.values(), proxy_port}
    ports = {**kept, **dict(zip(missing, free_ports(len(missing), taken), strict=True))}
    write_private(saved_file, json.dumps(ports, indent=2))
    return ports


def etcd_root(directory: Path) -> str:
    """Milvus's etcd root path for this data dir: random, so that no key is the default
    ("by-dev", which its metrics port takes as a password); a data dir whose etcd was made
    with the default keeps it (a new root would hide its collections)."""
    path = directory / "etcd-root.json"
    root = read_record(path).get("root")
    if isinstance(root, str) and _ETCD_ROOT.fullmatch(root):
        return root
    made = (directory / "data" / "etcd.data").exists()
    root = DEFAULT_ETCD_ROOT if made else f"meet-{secrets.token_hex(16)}"
    write_private(path, json.dumps({"root": root}))
    return root


def write_configs(
    settings: Settings, directory: Path, port: int, ports: dict[str, int], root: str
) -> Path:
    """The configs/ folder of a launch, its files written."""
    data, configs = directory / "data", directory / "configs"
    for d in (data, configs, directory / "logs"):
        private_dir(d)
    level, etcd_level, glog_level = _LOG_LEVELS[settings.log_level]
    values = {
        **ports,
        "proxy_port": port,
        "etcd_data_dir": data / "etcd.data",
        "local_storage_dir": data,
        "rocksmq_data_dir": data / "rocksmq",
        # Everything Milvus and its embedded etcd log goes to stdout, i.e. one log file
        # that the supervisor rotates.
        "etcd_log_path": "stdout",
        "etcd_log_level": etcd_level,
        "system_log_path": "",
        "authorization_enabled": "true",
    }
    mmap = data / "mmap" if settings.embedded_mmap else None
    if mmap is not None:
        private_dir(mmap)
    write_private(configs / "milvus.yaml", _milvus_yaml(settings, values, level, root, mmap))
    glog = (package_dir() / "data" / "glog.conf").read_text(encoding="utf-8")
    glog = glog.replace("--logtostderr=false", "--logtostderr=true")
    glog = re.sub(r"--minloglevel=\d+", f"--minloglevel={glog_level}", glog)
    write_private(configs / "glog.conf", glog)
    client = f"http://127.0.0.1:{ports['etcd_port']}"
    peer = f"http://127.0.0.1:{ports['etcd_peer_port']}"
    write_private(
        configs / "embedEtcd.yaml",
        f"name: meet\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: meet={peer}\nlog-level: {etcd_level}\n",
    )
    return configs


def _milvus_yaml(
    settings: Settings, values: dict, level: str, root: str, mmap: Path | None
) -> str:
    """The package's config template with our settings and `values` for its placeholders;
    `mmap`: the folder Milvus maps loaded segments from (None: no mapping)."""

    def fill(m: re.Match) -> str:
        value = values.get(m.group(1), m.group(2))
        if value is None:
            raise ServerUnavailableError(
                f"embedded Milvus: config template: no value for {m.group(1)}"
            )
        return str(value)

    template = (package_dir() / "data" / "config.yaml.template").read_text(encoding="utf-8")
    for pattern, value, count in (
        # Its graceful stop waits (30 min by default) for a query node to hand its segments
        # to another node, which a standalone server lacks; the data are safe on disk anyway.
        (r"^(  gracefulStopTimeout: )\d+", _GRACEFUL_STOP_S, 1),
        # The address each component advertises: loopback, the only interface it has when
        # isolated (on the host network it still listens on all of them).
        (r"^(  ip:)[^\n]*", " 127.0.0.1", 7),
        # The REST API on the proxy port: no client of this project uses it.
        (r"^(  http:\n    enabled: )true", "false", 1),
        (r"^(log:\n  level: )\w+", level, 1),
        (r"^(    interval: )\d+(?= # gc interval)", settings.embedded_gc_interval, 1),
        (r"^(    dropTolerance: )\d+", settings.embedded_gc_drop_tolerance, 1),
        (r"^(  rootPath: )by-dev(?= # The root path where data is stored in etcd)", root, 1),
        # Milvus 2.3 maps segments only with this path set (queryNode.mmap.* and the collection
        # property `mmap.enabled` came with 2.4).
        (r"^(queryNode:\n)", f"  mmapDirPath: {mmap}\n" if mmap else "", 1),
    ):
        template, found = re.subn(pattern, rf"\g<1>{value}", template, flags=re.M)
        if found != count:
            raise ServerUnavailableError(f"embedded Milvus: config template: {pattern!r} not found")
    return _PLACEHOLDER.sub(fill, template)
