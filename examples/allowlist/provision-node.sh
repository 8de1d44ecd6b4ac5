#!/bin/sh
# Admit (or retire) a node: what a provisioning tool calls once it has the node's EK.
#
#   provision-node.sh add    EK_INPUT NAME [KEY=VALUE...]
#   provision-node.sh remove EK_INPUT
#
# EK_INPUT  the EK certificate or EK public key (PEM or DER file), or the EK hash
#           (`spire-tpm-attestor hash` prints it on the node)
# NAME      the entry's name: selector tpm:name:NAME, and {{ .Name }} in agent_path_template
# KEY=VALUE labels: selectors tpm:label:KEY:VALUE
#
# The bucketed directory (ALLOWLIST_DIR) is the source of truth; SPIRE servers read it
# directly (allowlist "racks" { type = "bucketed_directory" ... }) where they mount it.
# After each change the HTTP JSON document is regenerated into the web root
# (DOCUMENT, served by nginx-allowlist.conf) for the servers that fetch it instead.
# Both writes are atomic (temporary file, then rename).
set -eu

ALLOWLIST_DIR=${ALLOWLIST_DIR:-/var/lib/spire/tpm/allowlist}
DOCUMENT=${DOCUMENT:-/srv/tpm-allowlist/tpm-allowlist.json}
cli=${SPIRE_TPM_ATTESTOR:-spire-tpm-attestor}

usage() {
    sed -n '2,11p' "$0" >&2
    exit 2
}

[ $# -ge 2 ] || usage
action=$1 input=$2
shift 2

case $action in
add)
    [ $# -ge 1 ] || usage
    name=$1
    shift
    for label in "$@"; do # KEY=VALUE... becomes --label KEY=VALUE...
        set -- "$@" --label "$label"
        shift
    done
    "$cli" allowlist add --directory "$ALLOWLIST_DIR" --layout bucketed \
        --name "$name" "$@" "$input"
    ;;
remove)
    "$cli" allowlist remove --directory "$ALLOWLIST_DIR" --layout bucketed "$input"
    ;;
*)
    usage
    ;;
esac

"$cli" allowlist export --directory "$ALLOWLIST_DIR" --layout bucketed --output "$DOCUMENT"
