"""Each vendor's recorded traffic, the requests it refuses, and the cases every provider runs.

One package per vendor (`tests/vendors/<kind>/`): `fixtures/` holds replies, streams and
error bodies as the vendor or its official SDK recorded them (README.md names where each
came from), and `__init__.py` defines `VENDOR`: how to make the provider, the vendor's own
refusals of a request it would not take (`gate`), and the cases of the shared suite
(`tests/vendors/suite.py`) over its fixtures. `tests/integration/test_vendor_conformance.py`
runs them all.
"""
