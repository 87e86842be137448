-- Zombie alerts. alert_id is derived from (call_id, kind), so one alert per call and kind
-- survives any redelivery.
CREATE TABLE IF NOT EXISTS zombie_alerts
(
    alert_id String,
    kind {LC_STRING},
    call_id String,
    node {LC_STRING},
    account {LC_STRING},
    vendor {LC_STRING},
    ran_ms UInt64,
    unverified_ms UInt64,
    estimated_cost Decimal(18, 6),
    currency {LC_STRING},
    message String,
    ts_ms UInt64,
    alert_date Date DEFAULT toDate(intDiv(ts_ms, 1000))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(alert_date)
ORDER BY alert_id;
