-- Prepaid balances (pipeline/domain/ledger.py): one row per top-up (entry_id 'topup:<topup id>') and per
-- prepaid call ('call:<call id>': its hold while the call is open, replaced by its debit, the CDR's
-- sell_cost, once the CDR is rated). Idempotent under redelivery and replay: ReplacingMergeTree keyed by
-- the entry and read with FINAL, so a top-up or a debit written twice counts once. `version` ranks a
-- debit over a hold (sipledger/store/tables.py ledger_version: rank << 44 | write ms, rank 0 for holds
-- and top-ups, 1 for a debit of a verdict's CDR, 2 for one of the node's own), as the cdrs table does.
-- balance = sum of top-ups - sum of debits; reserved = sum of holds (calls not rated yet).
CREATE TABLE IF NOT EXISTS account_ledger
(
    account {LC_STRING},
    entry_id String,
    kind Enum8('topup' = 1, 'hold' = 2, 'debit' = 3),
    amount Decimal(18, 6),
    currency {LC_STRING},
    node {LC_STRING},
    ts_ms UInt64,
    note String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (account, entry_id);
