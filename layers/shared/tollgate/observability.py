"""Logger, Tracer and Metrics, created once per process and shared by every handler and service."""

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE_NAME = "tollgate"
METRICS_NAMESPACE = "Tollgate"

logger = Logger(service=SERVICE_NAME)
tracer = Tracer(service=SERVICE_NAME)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
