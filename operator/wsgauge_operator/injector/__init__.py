"""The sidecar injector: a mutating admission webhook that adds the wsgauge sidecar to a pod.

- :mod:`.plan`: sans-I/O: a pod in, a JSONPatch (and the AdmissionReview answer) out.
- :mod:`.server`: its HTTPS endpoint (``python -m wsgauge_operator.injector.server``).
"""
