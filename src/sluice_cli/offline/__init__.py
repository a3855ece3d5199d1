"""The offline stack: template.yaml on an embedded moto server, real handlers, a downstream simulator."""

from sluice_cli.offline.stack import LocalService, OfflineStack, StackError

__all__ = ["LocalService", "OfflineStack", "StackError"]
