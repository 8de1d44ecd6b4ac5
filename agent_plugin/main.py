"""`spire-tpm-attestor-agent`: the executable named by plugin_cmd in agent.conf."""

from agent_plugin.plugin import SPEC
from spire_tpm_attestor.runtime.plugin import serve


def main() -> None:
    serve(SPEC)


if __name__ == "__main__":
    main()
