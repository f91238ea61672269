"""The service: what a request goes through whatever surface it came from.

The core (validate, authorise, limit, pick a provider, run), the registry and fallback
routes, auth, limits, chat sessions, model administration, and the settings tree. It
knows providers only through their entries and the Provider interface.
"""
