"""Milvus access: the embedded Milvus 2.3.5 standalone server, or the server at a configured URI.

The PyPI package `milvus` carries a real Milvus standalone binary (with embedded etcd and
rocksmq), unpacked and checked by `binaries`. `lifecycle` launches it, detached, through a
supervisor process (`supervisor`, run with `python -m`); every port it opens is chosen here (the
proxy on `settings.embedded_port`, the rest free ports, `configs`), so several embedded servers
can run side by side.

Network. Milvus 2.3.5 listens on all interfaces with its proxy, its metrics port and seven
internal gRPC ports (`net.Listen(":port")`; the `<component>.ip` settings only change the address
it advertises), and its authentication lets through any client that sends the cluster-member
`sourceId` header. So by default (`embedded_network = "isolated"`) it runs in a network namespace
of its own, whose only interface is its loopback. The supervisor holds 127.0.0.1:<proxy port> on
this machine and relays it into that namespace for the owner's connections only (`relay`:
loopback is shared by every account of the machine). The metrics port, whose endpoints change
settings, is not relayed: the supervisor checks its health inside the namespace and answers on a
socket in the 0700 milvus dir (`health`). Where the kernel allows no namespace, starting fails
with a one-line error, unless `embedded_network = "host"` with
`embedded_host_network_confirmed` accepts a server on all interfaces, exposed.

Authentication is on. At the first start root's default password is replaced by a generated one
in `<milvus dir>/credentials.json` (0600), used by `connect` (`credentials`);
`EmbeddedServer.rotate_credentials` (`meet-milvus server rotate-credentials`) replaces it.
Everything the project writes under the milvus dir is private to its user (0600 / 0700).

Housekeeping. The supervisor writes the server's output to `logs/milvus.log`, rotated by size
(`LOG_MAX_BYTES`, `LOG_BACKUPS` old files), at `settings.log_level`; on stop it drops the
components' etcd sessions (else the next start waits ~30 s for them to expire) and removes the
pid and server-id files Milvus leaves in /run/milvus and /tmp/milvus (`processes`).

Garbage collection. Milvus keeps the files of dropped collections and compacted segments until
its data coordinator collects them: by default every hour, once they have been dropped for three
hours. The embedded server collects every `settings.embedded_gc_interval` seconds (default 300)
the files dropped more than `settings.embedded_gc_drop_tolerance` seconds ago (default 600), so a
dropped collection leaves the disk within about a quarter of an hour. Files that no metadata
names (`dataCoord.gc.missingTolerance`) keep Milvus's hour: a shorter one could collect files a
running flush has written but not yet recorded.
"""

from meet_milvus.server.access import connect, describe
from meet_milvus.server.client import CONNECT_TIMEOUT, server_version
from meet_milvus.server.lifecycle import (
    LOG_BACKUPS,
    LOG_MAX_BYTES,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedServer,
    ServerStatus,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "EmbeddedServer",
    "ServerStatus",
    "connect",
    "describe",
    "server_version",
]
