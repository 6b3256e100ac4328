"""``python -m dgsm_integrations.lab``: the ``dgsm-lab`` command."""

from .cli import main

raise SystemExit(main())
