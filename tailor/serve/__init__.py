"""``tailor serve``: a trained run behind an HTTP API and a web page.

The layers, each in its own module: :mod:`.settings` (limits, bindable with ``-p``), :mod:`.uploads` (checking
and decoding uploaded images), :mod:`.batching` (concurrent requests grouped into one forward pass),
:mod:`.service` (the run's models, enrolment, the catalog's thumbnails), :mod:`.metrics` (Prometheus counters)
and :mod:`.app` (the FastAPI routes, the token rule and the JSON errors).
"""
