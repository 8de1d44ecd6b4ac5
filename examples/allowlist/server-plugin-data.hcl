# Server plugin data for a fleet: EK certificates, several allowlist sources, a deny list.
# (plugin_data_file = "/etc/spire/tpm/server-plugin-data.hcl", or inside plugin_data { }.)
ek_policy = "cert_and_allowlist"
ek_ca_path = "/etc/spire/tpm/ek-ca"       # reloaded when a CA is added or removed

# Sources are consulted in order: hash_path first, then each allowlist block as written.
# The first source that lists the EK gives its name and labels.
hash_path = "/var/lib/spire/tpm/hashes"   # spiffe/spire-tpm-plugin's flat layout

allowlist "racks" {
  type = "bucketed_directory"             # <dir>/<first two hex digits>/<ek hash>
  path = "/var/lib/spire/tpm/allowlist"
}

allowlist "inventory" {
  type = "http"
  url = "https://inventory.example.org:8443/tpm-allowlist.json"
  ca_path = "/etc/spire/tpm/inventory-ca.pem"
  client_certificate_path = "/etc/spire/tpm/inventory-client.pem"
  client_key_path = "/etc/spire/tpm/inventory-client.key"
  bearer_token_path = "/run/secrets/inventory-token"
  refresh_interval = "60s"
  max_staleness = "1h"
  connect_timeout = "5s"
  read_timeout = "10s"
  max_body_bytes = 268435456
}

# A listed EK is refused (PERMISSION_DENIED), whatever trusts it above.
denylist "revoked" {
  type = "file"                           # the JSON document, reloaded on change
  path = "/etc/spire/tpm/revoked.json"
}

agent_path_template = "{{ .PluginName }}/{{ .Name }}"
