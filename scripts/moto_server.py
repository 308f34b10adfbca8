#!/usr/bin/env python3
"""Starts a moto server on 127.0.0.1:<port> with a fix for a moto 5.2.5 Secrets Manager bug.

Usage: moto_server.py PORT [--exit-with-parent]

With --exit-with-parent the server stops when the process that started it goes away (so a
killed test run leaves no server behind).

The bug: after UpdateSecretVersionStage moves AWSCURRENT to another version, GetSecretValue
without a VersionStage (and BatchGetSecretValue) still returns the old version, because the
secret's default_version_id is not updated. Real AWS follows the AWSCURRENT label.
"""

import os
import sys
import threading
import time

from moto.secretsmanager.models import SecretsManagerBackend
from moto.server import main

_original_update_stage = SecretsManagerBackend.update_secret_version_stage


def _update_secret_version_stage(
    self, secret_id, version_stage, remove_from_version_id, move_to_version_id
):
    result = _original_update_stage(
        self, secret_id, version_stage, remove_from_version_id, move_to_version_id
    )
    if version_stage == "AWSCURRENT" and move_to_version_id:
        self.secrets[secret_id].set_default_version_id(move_to_version_id)
    return result


SecretsManagerBackend.update_secret_version_stage = _update_secret_version_stage


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or not args[0].isdigit() or args[1:] not in ([], ["--exit-with-parent"]):
        sys.exit("usage: moto_server.py PORT [--exit-with-parent]")
    if args[1:]:
        _exit_with_parent()
    main(["-H", "127.0.0.1", "-p", args[0]])
