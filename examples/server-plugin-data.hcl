# Server plugin data alone (for plugin_data_file, or `spire-tpm-attestor check`).
ek_policy = "cert_and_allowlist"
ek_ca_path = ["/etc/spire/tpm/ek-ca/infineon", "/etc/spire/tpm/ek-ca/nuvoton"]
hash_path = "/var/lib/spire/tpm/hashes"
agent_path_template = "{{ .PluginName }}/{{ .Name }}"
# TPMs whose EK chain NV does not complete (missing intermediates, Intel PTT / AMD fTPM
# with no EK certificate): see server-plugin-data-fetch.hcl for ek_aia_fetch and
# ek_cert_download.
