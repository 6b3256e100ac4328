"""The IPA/GSUP client that plays an MSC/VLR: now in the lab, ``dgsm_integrations.lab.gsup``."""

from dgsm_integrations.lab.gsup import *  # noqa: F403
from dgsm_integrations.lab.gsup import __all__  # noqa: F401
