-- Prepaid end reasons: credit_limit (the balance's last increment ran out) and insufficient_balance (a
-- call refused below the account's minimum balance), added to tables created before them. Adding Enum
-- values is a metadata change on every version (18.16 included); sipledger/store/migrate.py compares
-- the column's type in system.columns first and applies the MODIFY only where it differs.
ALTER TABLE cdrs MODIFY COLUMN end_reason Enum8('normal_caller_bye' = 1, 'normal_callee_bye' = 2, 'caller_cancel' = 3, 'busy' = 4, 'no_route' = 5, 'response_timeout' = 6, 'call_progress_timeout' = 7, 'session_expired' = 8, 'session_refresh_failed' = 9, 'liveness_probe_failed' = 10, 'no_timer_limit' = 11, 'max_duration_limit' = 12, 'pipeline_terminate' = 13, 'orphaned' = 14, 'auth_failed' = 15, 'call_limit_exceeded' = 16, 'rejected' = 17, 'credit_limit' = 18, 'insufficient_balance' = 19);
