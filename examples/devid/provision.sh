#!/bin/sh
# Provision this node's DevID: a signing key created inside its TPM, certified by your CA.
#
#   provision.sh AGENT_CONFIG OUT_DIR CA_CERT CA_KEY [COMMON_NAME]
#
# AGENT_CONFIG  the agent's plugin data or agent.conf (only its tcti is read)
# OUT_DIR       where the key files and the certificate chain go (e.g. /etc/spire/devid)
# CA_CERT/KEY   the issuing CA (PEM); here OpenSSL plays the CA, on this host for the
#               example. In production only devid.pub.pem travels to the CA, and only
#               the certificate comes back: the key never leaves the TPM.
# COMMON_NAME   the DevID subject CN, default: this host's name
#
# Then set in the agent's plugin_data:
#   devid_cert_path = "OUT_DIR/devid-chain.pem"
#   devid_key_path  = "OUT_DIR/devid.tss.pem"
# and on the server: devid_ca_path = the CA's root certificate (and require_devid = true).
set -eu

if [ $# -lt 4 ]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
agent_config=$1 out=$2 ca_cert=$3 ca_key=$4
common_name=${5:-$(hostname -f 2>/dev/null || hostname)}
cli=${SPIRE_TPM_ATTESTOR:-spire-tpm-attestor}

"$cli" devid create --agent-config "$agent_config" --out-dir "$out"

# A DevID certificate: a signing key, not a CA.
extensions="$out/devid-extensions.cnf"
printf '[devid]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n' \
    > "$extensions"
openssl x509 -new -subj "/CN=$common_name" -force_pubkey "$out/devid.pub.pem" \
    -CA "$ca_cert" -CAkey "$ca_key" -days 825 \
    -extfile "$extensions" -extensions devid -out "$out/devid.pem"
rm -f "$extensions"

# Leaf first, then the issuing CA, so the server can chain through an intermediate.
cat "$out/devid.pem" "$ca_cert" > "$out/devid-chain.pem"
echo "DevID for CN=$common_name: $out/devid-chain.pem, key $out/devid.tss.pem"
