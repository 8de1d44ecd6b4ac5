# Agent plugin data alone (for plugin_data_file, or `spire-tpm-attestor check`).
tcti = "device:/dev/tpmrm0"
ek_algorithm = "rsa2048"
ak_algorithm = "ecc"
event_log_path = "/sys/kernel/security/tpm0/binary_bios_measurements"
max_event_log_size = 1048576
log_level = "INFO"
telemetry {
    Prometheus {
        port = 9990
    }
}
