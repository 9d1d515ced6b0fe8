"""The pipeline's services, written once.

Everything that lists them reads this registry: `cloudbill run <service>` (its choices and the module it runs),
the dev stack (cloudbill/stack.py: which services and in what order), the chaos run (which ones it kills), and
docker-compose.yml, which cannot import Python, through a test that compares its services with this list.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name (`cloudbill run <name>`, the compose service, the process name in the dev stack)."""

    name: str
    module: str  # its `run(settings)` runs the service until SIGTERM/SIGINT
    start_order: int  # the dev stack starts them in this order (and numbers their metrics ports so)
    killable: bool = True  # the chaos run SIGKILLs it; a service it is not is only checked for being up


# In the order of the CLI's choices and of docker-compose.yml (also the order the chaos plan rotates kills in).
REGISTRY: tuple[ServiceSpec, ...] = (
    ServiceSpec("poller", "services.poller.main", start_order=6),
    ServiceSpec("ingester", "services.ingester.main", start_order=1),
    ServiceSpec("matcher", "services.matcher.main", start_order=2),
    ServiceSpec("finance-pusher", "services.finance_pusher.main", start_order=3),
    ServiceSpec("alerter", "services.alerter.main", start_order=4, killable=False),
    ServiceSpec("projector", "services.projector.main", start_order=0),
    ServiceSpec("api", "services.api.main", start_order=5),
)

BY_NAME: dict[str, ServiceSpec] = {s.name: s for s in REGISTRY}
NAMES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
START_ORDER: tuple[str, ...] = tuple(s.name for s in sorted(REGISTRY, key=lambda s: s.start_order))
KILLABLE: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.killable)

# The CLI's choice type, built from the registry (members: poller, ingester, ..., finance_pusher = "finance-pusher").
Service = StrEnum("Service", {s.name.replace("-", "_"): s.name for s in REGISTRY})  # type: ignore[misc]
