-- 0005_observability: what tracing and alerting need.
--
-- jobs.trace_context: the W3C traceparent of the job's root span, made at submit, so every
-- step attempt in any worker process joins one trace.
ALTER TABLE jobs ADD COLUMN trace_context TEXT;

-- alert_incidents: one row per incident of an alert rule (and per scope, e.g. a workflow). A
-- rule that keeps firing updates its open incident instead of opening another, so each incident
-- calls its hook once; the incident closes when the rule stops firing.
CREATE TABLE alert_incidents (
    id          TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    scope       TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}',
    opened      REAL NOT NULL,
    updated     REAL NOT NULL,
    closed      REAL,
    notified    REAL
);
CREATE UNIQUE INDEX alert_incidents_open ON alert_incidents (rule, scope) WHERE status = 'open';
