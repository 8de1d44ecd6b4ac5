"""`spire-tpm-attestor-server`: the executable named by plugin_cmd in server.conf."""

from spire_tpm_attestor.runtime.grpc_environment import choose_grpc_experiments


def main() -> None:
    choose_grpc_experiments()  # before grpc is imported: it reads them at import
    from server_plugin.plugin import SPEC
    from spire_tpm_attestor.runtime.plugin import serve

    serve(SPEC)


if __name__ == "__main__":
    main()
