# Agent plugin data alone (for plugin_data_file, or `spire-tpm-attestor check`).
tcti = "device:/dev/tpmrm0"
ek_algorithm = "rsa2048"
ak_algorithm = "ecc"
