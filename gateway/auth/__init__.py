"""Authentication: bearer tokens, the keys of their issuers, and the principal behind a request."""
