"""Kafka plumbing on confluent-kafka, shared by every service."""

from shared.kafka.admin import create_topics, group_lag, high_watermarks
from shared.kafka.consumer import ConsumerLoop, StopSignal
from shared.kafka.deadletter import dead_letter, dlq_topic
from shared.kafka.producer import DeliveryError, EventProducer
from shared.kafka.records import Out, Record
from shared.kafka.retry import Retryable
from shared.kafka.transactional import TransactionalProcessor

__all__ = [
    "ConsumerLoop",
    "DeliveryError",
    "EventProducer",
    "Out",
    "Record",
    "Retryable",
    "StopSignal",
    "TransactionalProcessor",
    "create_topics",
    "dead_letter",
    "dlq_topic",
    "group_lag",
    "high_watermarks",
]
