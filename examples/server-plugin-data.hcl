# Server plugin data alone (for plugin_data_file, or `spire-tpm-attestor check`).
ek_policy = "cert_and_allowlist"
ek_ca_path = ["/etc/spire/tpm/ek-ca/infineon", "/etc/spire/tpm/ek-ca/nuvoton"]
ek_cert_expiry = "enforce"
hash_path = "/var/lib/spire/tpm/hashes"
agent_path_template = "{{ .PluginName }}/{{ .Name }}"
# TPMs whose EK chain NV does not complete (missing intermediates, Intel PTT / AMD fTPM
# with no EK certificate): see server-plugin-data-fetch.hcl for ek_aia_fetch and
# ek_cert_download.
# Measured boot: the agent sends its firmware event log, replayed against a quote of
# sha256 PCRs 0-7; its facts become secureboot:/firmware:/boot: selectors and must meet
# the policy in event-log-policy.hcl (which alone turns the event log on).
event_log_policy_path = "/etc/spire/tpm/event-log-policy.hcl"
log_level = "WARN"
library_log_level = "WARN"
telemetry {
    Prometheus {
        host = "127.0.0.1"
        port = 9989
    }
}
