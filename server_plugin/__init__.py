"""The server-side plugin: verifies TPM evidence and decides admission.

Pure Python on `cryptography`: nothing here imports tpm2-pytss.
"""
