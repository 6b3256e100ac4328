"""dgsm-integrations: route calls and SMS across a Distributed GSM network.

The shared building block is :mod:`dgsm_integrations.mslookup`, a resolver that asks
every D-GSM site at once (mslookup over multicast DNS, wire compatible with OsmoHLR)
where a subscriber is now.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
