"""The Powertools singletons every function shares: one Logger, one Tracer, one Metrics.

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME and
POWERTOOLS_METRICS_NAMESPACE (set in the template's Globals), so tests and the offline stack can
set them too. Handlers decorate with these; domain modules log through `logger` and count through
`metrics` without knowing which function they run in.
"""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "sluice")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Sluice")

# Defaults as the template sets them, so that importing this module outside Lambda (a test, the
# CLI) never yields a Metrics without a namespace, which fails at flush.
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
