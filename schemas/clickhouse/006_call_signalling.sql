-- Call analysis (`sipledger trace`): one row per entry of a call signalling record
-- (schemas/call_signalling.json), a SIP message of either leg or a memo of the node; the record's own
-- fields are repeated on each of its rows. ReplacingMergeTree keyed by (call_id, node, n) folds a record
-- stored twice (a redelivery, a re-read journal); read it with FINAL.
-- Retention: ClickHouse 18.16 has no table TTL, so the table is partitioned by the UTC day the call
-- started and the pipeline drops the partitions older than trace.retention_days
-- (sipledger/store/signalling.py), the same way on every server version.
CREATE TABLE IF NOT EXISTS call_signalling
(
    call_id String,
    node {LC_STRING},
    n UInt32,
    ts_ms UInt64,
    kind Enum8('sip' = 1, 'memo' = 2),
    leg {LC_STRING},
    direction {LC_STRING},
    transport {LC_STRING},
    remote String,
    sip_call_id String,
    first_line String,
    headers String,
    body Nullable(String),
    body_bytes UInt32,
    text String,
    account {LC_STRING},
    selected_by {LC_STRING},
    local String,
    start_ms UInt64,
    end_ms Nullable(UInt64),
    end_reason Nullable(String),
    failed UInt8,
    dropped_entries UInt32,
    day Date DEFAULT toDate(intDiv(start_ms, 1000), 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY day
ORDER BY (call_id, node, n);
