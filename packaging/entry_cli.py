"""Frozen entry point of the operator CLI executable."""

import sys

from spire_tpm_attestor.cli.main import main

sys.exit(main())
