# Server plugin data alone (for plugin_data_file, or `spire-tpm-attestor check`).
ek_policy = "cert_and_allowlist"
ek_ca_path = ["/etc/spire/tpm/ek-ca/infineon", "/etc/spire/tpm/ek-ca/nuvoton"]
hash_path = "/var/lib/spire/tpm/hashes"
agent_path_template = "{{ .PluginName }}/{{ .Name }}"
