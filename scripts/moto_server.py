#!/usr/bin/env python3
"""Starts a moto server on 127.0.0.1:<port> with a fix for a moto 5.2.5 Secrets Manager bug.

Usage: moto_server.py PORT

The bug: after UpdateSecretVersionStage moves AWSCURRENT to another version, GetSecretValue
without a VersionStage (and BatchGetSecretValue) still returns the old version, because the
secret's default_version_id is not updated. Real AWS follows the AWSCURRENT label.
"""

import sys

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


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: moto_server.py PORT")
    main(["-H", "127.0.0.1", "-p", sys.argv[1]])
