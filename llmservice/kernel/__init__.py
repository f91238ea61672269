"""The domain kernel: what every other layer speaks, importing nothing else of ours.

Domain types and errors, the Provider interface and its entry, the scheduler, what a
request carries across layers, redaction, per-token signals and the settings base.
"""
