"""The audit pipeline (book: Audit): events, sinks, overflow policies, bounded
drain with a recovery log, retention.

::

    from axess.audit import AuditPipeline, JSONLSink, ShutdownAuthn, StoreSink

    audit = AuditPipeline(
        sinks=[StoreSink(store), JSONLSink("/var/log/app/audit.jsonl")],
        on_full=ShutdownAuthn(),
        recovery_log="/var/lib/app/audit-recovery.jsonl",
    )
"""

from axess.audit.buffer import Block, DropOldest, OverflowPolicy, ShutdownAuthn
from axess.audit.events import (
    DEFAULT_STATUS,
    EVENT_TYPES,
    AuditQuery,
    AuthEvent,
    EventStatus,
    EventType,
)
from axess.audit.pipeline import AuditPipeline, AuditUnavailable, SinkStats
from axess.audit.recovery import RecoveryLog
from axess.audit.retention import AuditRetention, JSONLArchiver, RetentionReport
from axess.audit.sinks import (
    AuditSink,
    CallableSink,
    JSONLSink,
    LoggingSink,
    OTelLogsSink,
    StoreSink,
    query_events,
)

__all__ = [
    "DEFAULT_STATUS",
    "EVENT_TYPES",
    "AuditPipeline",
    "AuditQuery",
    "AuditRetention",
    "AuditSink",
    "AuditUnavailable",
    "AuthEvent",
    "Block",
    "CallableSink",
    "DropOldest",
    "EventStatus",
    "EventType",
    "JSONLArchiver",
    "JSONLSink",
    "LoggingSink",
    "OTelLogsSink",
    "OverflowPolicy",
    "RecoveryLog",
    "RetentionReport",
    "ShutdownAuthn",
    "SinkStats",
    "StoreSink",
    "query_events",
]
