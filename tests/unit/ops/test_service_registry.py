"""Every list of services is derived from cloudbill/services.py: the CLI's `run` choices and what it runs, the dev
stack's start order (and so its metrics ports), and the chaos run's kill list (and so, for a seed, its plan)."""

from __future__ import annotations

import importlib

from cloudbill import services as registry
from cloudbill.chaos_plan import KILLED_SERVICES
from cloudbill.stack import SERVICES


def test_the_cli_choices_are_the_registry_in_order() -> None:
    assert [s.value for s in registry.Service] == list(registry.NAMES)
    assert registry.Service("finance-pusher") is registry.Service.finance_pusher
    assert registry.NAMES == ("poller", "ingester", "matcher", "finance-pusher", "alerter", "projector", "api")


def test_every_service_module_has_a_run_function() -> None:
    for spec in registry.REGISTRY:
        assert callable(importlib.import_module(spec.module).run), spec.name


def test_the_stack_starts_every_service_in_the_order_it_always_did() -> None:
    assert SERVICES == ("projector", "ingester", "matcher", "finance-pusher", "alerter", "api", "poller")
    assert sorted(SERVICES) == sorted(registry.NAMES)
    assert len({s.start_order for s in registry.REGISTRY}) == len(registry.REGISTRY)


def test_chaos_kills_every_service_but_the_alerter_in_registry_order() -> None:
    assert KILLED_SERVICES == ("poller", "ingester", "matcher", "finance-pusher", "projector", "api")
    assert set(registry.NAMES) - set(KILLED_SERVICES) == {"alerter"}
