-- Rate decks (sell side per account, buy side per vendor), as loaded for rating, so reports
-- and notebooks can recompute costs independently.
CREATE TABLE IF NOT EXISTS rates
(
    deck_version String,
    side Enum8('sell' = 1, 'buy' = 2),
    party {LC_STRING},
    prefix String,
    rate_per_minute Decimal(18, 6),
    initial_increment UInt32,
    subsequent_increment UInt32,
    connection_fee Decimal(18, 6),
    minimum_duration UInt32,
    currency {LC_STRING},
    effective_from_ms UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (deck_version, side, party, prefix, effective_from_ms);
