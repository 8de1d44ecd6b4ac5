"""`spire-tpm-attestor-agent`: the executable named by plugin_cmd in agent.conf."""

import sys

from spire_tpm_attestor.runtime.grpc_environment import choose_grpc_experiments


def main() -> None:
    choose_grpc_experiments()  # before grpc is imported: it reads them at import
    from spire_tpm_attestor.runtime.plugin import serve

    try:
        from agent_plugin.plugin import SPEC
    except ImportError as exc:
        # Before the handshake SPIRE shows stderr only as text; say what to install.
        sys.stderr.write(
            f"[ERROR] the TPM agent plugin cannot start: {exc}. It needs tpm2-pytss and "
            "libtss2: pip install 'spire-tpm-attestor[agent]'\n"
        )
        sys.exit(1)
    serve(SPEC)


if __name__ == "__main__":
    main()
