# Vault / OpenBao policy for qlik-rotator (README, "Vault / OpenBao"): read-only on the KV v2
# secrets it rotates from, nothing else. Adjust the mount ("secret") and the prefix ("qlik/")
# to your layout; tests/vault.rs loads this file into a real OpenBao and checks that it allows
# the reads and refuses a path outside the prefix.

# Read a secret's versions (GET secret/data/qlik/<path>[?version=N]).
path "secret/data/qlik/*" {
  capabilities = ["read"]
}

# Read a secret's metadata (versions, deletion state): for `bao kv metadata get` when
# debugging; the rotator itself takes the version from the data read.
path "secret/metadata/qlik/*" {
  capabilities = ["read", "list"]
}

# The rotator's own token: TTL (token auth) and renewal before expiry. The built-in
# "default" policy grants these too; they are listed for tokens created without it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
