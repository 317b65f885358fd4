"""Certificates and TLS serving, shared by every HTTPS server of the operator and by the devcluster.

- :mod:`.certificates`: X.509 CAs, signed and self-signed certificates (the one certificate helper).
- :mod:`.serving`: serving certificates, the aggregation layer's client authentication
  (request-header CA) and starting an aiohttp site over TLS.
"""
