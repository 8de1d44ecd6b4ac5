# event_log_policy_path: what a node's measured boot must show (every rule optional).
# Reloaded when it changes; a change that does not parse keeps the last good policy.
# Fingerprints are SHA-256 of a certificate's DER (`spire-tpm-attestor eventlog inspect`
# prints them for a node's log); each rule reads only PCRs the quote proved.

# The agent must send a log (an agent without one, or with one over its
# max_event_log_size, is refused naming its reason).
require_event_log = true

# The SecureBoot variable, measured into PCR 7 before the firmware's separator, is 1.
require_secure_boot = true

# Every certificate in PK, KEK and db is one of these. The values in this file are
# placeholders: put your fleet's here, as `eventlog inspect` shows them for a node.
allowed_pk = ["3f8e0b6b0f3d1a7c6f28dd3b1f6a9a7a0e2c6d4b8f1e3a5c7d9b0a2c4e6f8a0b"]
allowed_kek = ["a1117f516a32cefcba3f2d1ace10a87972fd6bbe8fe0d0b996e09e65d802a503"]
allowed_db = [
  "e8e95f0733a55e8bad7be0a1413ee23c51fcea64b3c8fa6a786935fddcc71961",
  "48e99b991f57fc52f76149599bff0a58c47154229b9f8d603ac40d3500248507",
]

# Revocations dbx must hold: EFI_CERT_SHA256 entries (or revoked certificates'
# fingerprints), e.g. the boot loaders of a published advisory.
required_dbx = [
  "80b4d96931bf0d02fd91a61e19d14f1da452e66db2408ca8604d411f92659f0a",
]

# Every EFI boot application the firmware started (PCR 4, SHA-256 Authenticode digests):
# the shim, GRUB and kernel builds you ship.
allowed_boot_applications = [
  "1bde1a2c5c2e8c4b4ea7a2d3e7d4c98f7f1b6e2a9c0d3b5a7e9f1c3d5b7a9e0f",
]
