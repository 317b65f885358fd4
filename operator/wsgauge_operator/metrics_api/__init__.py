"""The custom metrics API (``custom.metrics.k8s.io``) and the KEDA endpoint, served from memory.

- :mod:`.core`: sans-I/O: a request path in, a status and JSON body out.
- :mod:`.server`: the aiohttp HTTPS server around it, callable only by the aggregation layer.
"""
