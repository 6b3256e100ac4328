"""``python -m dgsm_integrations.esme`` = ``esme_dgsm``."""

import sys

from .cli import main

sys.exit(main())
