"""`python -m stave.infra.settings_docs --write docs/configuration.md`."""

import sys

from stave.infra.settings_docs import main

sys.exit(main())
