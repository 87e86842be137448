-- One row per call. Timestamps are UInt64 epoch milliseconds (UTC): exact on every
-- ClickHouse version, including 18.16, which has no DateTime64.
-- Idempotent under redelivery: the sort key is call_id, ReplacingMergeTree keeps the row of
-- the highest `version`, and every report reads with FINAL, so a CDR inserted twice (a
-- crash between insert and offset commit, a replay) shows once.
-- Which record of a call wins (sipledger/store/tables.py cdr_version): a CDR closed by the
-- call's own node (closed_by = 'node', from its call.terminated) always outranks one closed
-- by a pipeline verdict (closed_by = 'pipeline', node.lost); within a rank the later write
-- wins (a re-rating). So a verdict record can never replace the node's own account of a call.
CREATE TABLE IF NOT EXISTS cdrs
(
    call_id String,
    node {LC_STRING},
    account {LC_STRING},
    caller String,
    callee String,
    source_ip String,
    vendor {LC_STRING},
    gateway String,
    setup_ms UInt64,
    ring_ms Nullable(UInt64),
    answer_ms Nullable(UInt64),
    end_ms UInt64,
    pdd_ms Nullable(UInt64),
    duration_ms UInt64,
    verified_ms UInt64,
    unverified_ms UInt64,
    billed_seconds UInt32,
    timer_mode Enum8('none' = 0, 'session_timer' = 1, 'no_timer' = 2),
    session_expires Nullable(UInt32),
    effective_limit_s Nullable(UInt32),
    refresh_count UInt32,
    last_proof_of_life_ms Nullable(UInt64),
    end_reason Enum8(
        'normal_caller_bye' = 1, 'normal_callee_bye' = 2, 'caller_cancel' = 3, 'busy' = 4,
        'no_route' = 5, 'response_timeout' = 6, 'call_progress_timeout' = 7, 'session_expired' = 8,
        'session_refresh_failed' = 9, 'liveness_probe_failed' = 10, 'no_timer_limit' = 11,
        'max_duration_limit' = 12, 'pipeline_terminate' = 13, 'orphaned' = 14, 'auth_failed' = 15,
        'call_limit_exceeded' = 16, 'rejected' = 17),
    ended_by Enum8('caller' = 1, 'callee' = 2, 'system' = 3),
    sip_status Nullable(UInt16),
    zombie UInt8,
    exposure_ms UInt64 DEFAULT 0,
    exposure_open UInt8 DEFAULT 0,
    closed_by Enum8('node' = 1, 'pipeline' = 2) DEFAULT 'node',
    sell_rate Nullable(Decimal(18, 6)),
    sell_cost Decimal(18, 6),
    buy_rate Nullable(Decimal(18, 6)),
    buy_cost Decimal(18, 6),
    margin Decimal(18, 6),
    currency {LC_STRING},
    rate_deck_version String,
    version UInt64,
    end_date Date DEFAULT toDate(intDiv(end_ms, 1000))
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(end_date)
ORDER BY call_id;
