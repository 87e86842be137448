-- CDR schema_version 2: exposure and who closed the record, added to tables created before it.
-- Rows written earlier read as exposure 0, not open, closed by their node (what they recorded).
-- 18.16 has no ADD COLUMN IF NOT EXISTS: sipledger/store/migrate.py checks system.columns itself
-- and applies each ADD COLUMN only where the column is missing, on every server version.
ALTER TABLE cdrs ADD COLUMN IF NOT EXISTS exposure_ms UInt64 DEFAULT 0 AFTER zombie;
ALTER TABLE cdrs ADD COLUMN IF NOT EXISTS exposure_open UInt8 DEFAULT 0 AFTER exposure_ms;
ALTER TABLE cdrs ADD COLUMN IF NOT EXISTS closed_by Enum8('node' = 1, 'pipeline' = 2) DEFAULT 'node' AFTER exposure_open;
