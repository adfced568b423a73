-- Columns `verify` adds to the aggregate of sql/session_times.sql: the `last_validated` of every
-- token of the device (clamped like a ULID's time) and whether one of them has none.
           array_agg(least(greatest(last_validated, 0), 281474976710655))
               FILTER (WHERE last_validated IS NOT NULL) AS times,
           bool_or(last_validated IS NULL) AS untimed
