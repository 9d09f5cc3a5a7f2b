"""The Alipay channel: the adapter (adapter.py), its RSA2 signatures (signing.py) and the simulator (simulator.py)."""
