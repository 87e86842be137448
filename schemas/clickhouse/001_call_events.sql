-- Raw call events, as published by the B2BUA. The log (Kafka or the file journal) is the
-- truth; this table is a queryable copy. ReplacingMergeTree keyed by event_id folds redeliveries.
CREATE TABLE IF NOT EXISTS call_events
(
    event_id String,
    call_id String,
    seq UInt32,
    type {LC_STRING},
    ts_ms UInt64,
    node {LC_STRING},
    payload String,
    event_date Date DEFAULT toDate(intDiv(ts_ms, 1000))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (call_id, seq, event_id);
