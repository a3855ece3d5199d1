"""The Powertools singletons every function shares: one Logger, one Tracer, one Metrics.

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME and
POWERTOOLS_METRICS_NAMESPACE (set in the template's Globals), so tests and the offline stack can
set them too. Handlers decorate with these; domain modules log through `logger` and count through
`metrics` without knowing which function they run in.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
tracer = Tracer()
metrics = Metrics()

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
