"""The collector: the service a maintainer runs to receive reports.

It shares only :mod:`reqtelemetry.payload` (the wire format and its schema)
and :mod:`reqtelemetry.hashcash` with the client.
"""
