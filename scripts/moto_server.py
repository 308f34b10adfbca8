#!/usr/bin/env python3
"""Starts a moto server on 127.0.0.1:<port> with fixes for two moto 5.2.5 bugs (see below).

Usage: moto_server.py PORT [--exit-with-parent]

With --exit-with-parent the server stops when the process that started it goes away (so a
killed test run leaves no server behind).

Secrets Manager: after UpdateSecretVersionStage moves AWSCURRENT to another version, GetSecretValue
without a VersionStage (and BatchGetSecretValue) still returns the old version, because the
secret's default_version_id is not updated. Real AWS follows the AWSCURRENT label.

DynamoDB: concurrent requests can corrupt a transaction (see the lock below).
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


# moto 5.2.5's DynamoDB backend is not thread-safe, and the server answers each request on its
# own thread: TransactWriteItems deep-copies the whole table (to roll back) while other threads
# write to it, and fails with a 500 "dictionary changed size during iteration". Real DynamoDB
# isolates each request; here DynamoDB requests are served one at a time.
from moto.dynamodb.responses import DynamoHandler  # noqa: E402

_dynamodb_lock = threading.Lock()
_original_dynamodb_call_action = DynamoHandler.call_action


def _dynamodb_call_action(self):
    with _dynamodb_lock:
        return _original_dynamodb_call_action(self)


DynamoHandler.call_action = _dynamodb_call_action


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
