"""The embedded server's root credential: generated at the first start, kept in a 0600 file of
the milvus dir, rotated on request."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from meet_milvus.errors import ServerUnavailableError
from meet_milvus.files import read_record, write_private
from meet_milvus.server.client import CONNECT_TIMEOUT, AuthRefused, clean, open_client

ROOT = "root"
DEFAULT_ROOT_PASSWORD = "Milvus"  # what Milvus gives root when it creates its metadata


class Credentials:
    """root's password in `path` (credentials.json), and the one being rotated in, beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = path.with_name("credentials.new.json")

    def token(self) -> str:
        """The stored credential as a Milvus token ("root:<password>"), or "" before the first
        start. Never print it."""
        password = read_record(self.path).get("password")
        return f"{ROOT}:{password}" if isinstance(password, str) and password else ""

    def authenticate(self, uri: str) -> None:
        """Make root's password the stored one, replacing Milvus's default at the first start."""
        stored = read_record(self.path).get("password")
        if not isinstance(stored, str) or not stored:
            stored = _new_password()
            write_private(self.path, json.dumps({"user": ROOT, "password": stored}))
        pending = read_record(self.pending).get("password")
        for password in (stored, pending, DEFAULT_ROOT_PASSWORD):
            if not isinstance(password, str) or not password:
                continue
            try:
                client = open_client(uri, f"{ROOT}:{password}", "", CONNECT_TIMEOUT)
            except AuthRefused:
                continue
            try:
                if password == DEFAULT_ROOT_PASSWORD:
                    client.update_password(ROOT, password, stored)
                elif password == pending:  # a rotation that stopped half-way
                    self.pending.replace(self.path)
            except Exception as e:
                why = clean(clean(str(e), stored), password)
                raise ServerUnavailableError(
                    f"embedded Milvus: root's password was not set ({why})"
                ) from None
            finally:
                client.close()
            return
        raise ServerUnavailableError(
            f"embedded Milvus refuses the credential stored in {self.path}; "
            f"was root's password changed by hand?"
        )

    def rotate(self, uri: str) -> Path:
        """Give root of the server at `uri` a new generated password; the file's path."""
        old = read_record(self.path).get("password")
        if not isinstance(old, str) or not old:
            raise ServerUnavailableError(f"embedded Milvus: no credential stored in {self.path}")
        client = open_client(uri, f"{ROOT}:{old}", "", CONNECT_TIMEOUT)
        new = _new_password()
        # The new password is on disk before the server has it: a crash in between leaves it
        # in the pending file, which `authenticate` tries and promotes.
        write_private(self.pending, json.dumps({"user": ROOT, "password": new}))
        try:
            client.update_password(ROOT, old, new)
        except Exception as e:
            self.pending.unlink(missing_ok=True)
            why = clean(clean(str(e), old), new)
            raise ServerUnavailableError(
                f"embedded Milvus: the password was not changed ({why})"
            ) from None
        finally:
            client.close()
        self.pending.replace(self.path)
        return self.path


def _new_password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters; Milvus takes 6 to 256
