"""`python -m spire_tpm_attestor.cli`, the same as the `spire-tpm-attestor` script."""

import sys

from spire_tpm_attestor.cli.main import main

sys.exit(main())
