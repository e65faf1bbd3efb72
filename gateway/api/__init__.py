"""The HTTP API (aiohttp): routes, request parsing, and errors as RFC 9457 problems."""
