"""The village lab: a real D-GSM network on one machine (``dgsm-lab``, docs/lab.md)."""
