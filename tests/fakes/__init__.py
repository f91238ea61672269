"""Local servers that speak a SaaS provider's exact wire format, errors included."""
