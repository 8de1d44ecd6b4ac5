"""The operator's command line, `spire-tpm-attestor` (entry point: `cli.main:main`).

`main` holds the parser and the `version`, `hash` and `check` commands; `allowlist` and
`devid` add their subcommands; `spire_config` reads SPIRE agent/server config files.
"""
