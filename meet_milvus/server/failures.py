"""Why the embedded server did not start, in one line: from what its supervisor recorded, the
ports it needed, or the last error in its log."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from meet_milvus.errors import ServerUnavailableError
from meet_milvus.files import read_record
from meet_milvus.server.processes import port_free, port_in_use

_HOST_EXPOSES = (
    "the host network exposes Milvus's proxy, metrics and internal ports on every interface, and "
    "Milvus 2.3.5 admits any client that sends its cluster-member header, without a password"
)
HOST_NETWORK_RISK = (
    f'embedded_network = "host": {_HOST_EXPOSES}; set embedded_host_network_confirmed = true '
    f"(MEET_EMBEDDED_HOST_NETWORK_CONFIRMED=1) to run it so anyway"
)


class PortTaken(ServerUnavailableError):
    """Another program holds one of the ports chosen for the server."""


class ExitedEarly(ServerUnavailableError):
    """The server exited while starting."""


def start_failure(
    state: dict, error_file: Path, run_file: Path, log: Path, proc: subprocess.Popen | None
) -> ServerUnavailableError:
    """Why the server `state` names died while starting; `proc` is its supervisor when this
    process launched it."""
    failure = read_record(error_file)  # the supervisor's SetupError, if any
    if failure.get("kind") == "port_taken":
        if failure.get("port") == state["port"]:
            return port_in_use(state["port"])
        return PortTaken(f"embedded Milvus: port {failure.get('port')} was taken")
    if failure.get("kind") == "isolation":
        return ServerUnavailableError(
            f"embedded Milvus: cannot give it a network of its own ({failure.get('detail')}), "
            f"and Milvus 2.3.5 alone listens on all interfaces; point --uri at a server "
            f"of your own, or (on a machine no one else uses, in a network you trust) set "
            f'embedded_network = "host" and embedded_host_network_confirmed = true: '
            f"{_HOST_EXPOSES}"
        )
    if failure:
        detail = failure.get("detail")
        return ServerUnavailableError(f"embedded Milvus: {detail}; see its log {log}")
    if state.get("network") == "host":
        # Its ports are free again now that it is gone, unless another program holds one.
        ports = (state["port"], *state.get("ports", {}).values())
        held = [p for p in ports if not port_free(p)]
        if state["port"] in held:
            return port_in_use(state["port"])
        if held:
            return PortTaken(f"embedded Milvus: port {held[0]} was taken")
    hint = _log_hint(log) or _exit_reason(run_file, proc)
    return ExitedEarly(
        f"embedded Milvus exited during start-up{f' ({hint})' if hint else ''}; see its log {log}"
    )


def _exit_reason(run_file: Path, proc: subprocess.Popen | None) -> str:
    code = read_record(run_file).get("exit")  # Milvus's, as its supervisor saw it
    if not isinstance(code, int):
        code = proc.poll() if proc else None
    if code is None:
        return ""
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _log_hint(log: Path) -> str:
    """Why a start failed, from its log: the last error logged before the crash, or the panic."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - (4 << 20)))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    panic = re.search(r"^panic: (.+)$", text, re.M)
    before = text[: panic.start()] if panic else text
    errors = re.findall(
        r"^\[[^]]*\] \[(?:ERROR|FATAL)\] \[[^]]*\] \[\"(.*?)\"\](.*)$", before, re.M
    )
    if errors:
        message, fields = errors[-1]
        error = re.search(r'\[error="(.*?)(?<!\\)"\]', fields)
        return (f"{message}: {error.group(1)}" if error else message)[:200]
    return panic.group(1).strip()[:200] if panic else ""
