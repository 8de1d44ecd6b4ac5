"""Pure-Python TPM 2.0 primitives for the server side.

Everything here depends only on `cryptography` and the standard library so the server
plugin runs without tpm2-pytss or libtss2. Functions are pure: they parse, compute and
verify, and never touch a TPM, a file or the network.
"""
