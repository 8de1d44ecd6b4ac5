"""`spire-tpm-attestor-server`: the executable named by plugin_cmd in server.conf."""

from server_plugin.plugin import SPEC
from spire_tpm_attestor.runtime.plugin import serve


def main() -> None:
    serve(SPEC)


if __name__ == "__main__":
    main()
