-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `compat_sessions` must hold for devices: one session per migrated device. Its
-- creation time is `session_ms` of the session_times rules below (NULL: the migration's time), and
-- for upstream's tool the `last_validated` of any of the device's tokens (it takes the first
-- token it meets), or anything when one of them has none (then it used its migration time).
-- `sess` is computed here once, with the extra columns of session_alternatives.sql; the copy
-- inside the devices rules below is not selected from, so the planner drops it.
WITH
-- When each device's compat session was created: the earliest `last_validated` of its
-- non-refreshable tokens, else of its refreshable ones (puppet tokens never count). A device
-- whose tokens never recorded a time gets the migration time, chosen by syn2mas (NULL here).
sess AS (
    SELECT user_id, device_id,
           coalesce(min(last_validated) FILTER (WHERE refresh_token_id IS NULL),
                    min(last_validated)) AS session_ms,
-- Columns `verify` adds to the aggregate of the session_times rules below: the `last_validated` of every
-- token of the device (clamped like a ULID's time) and whether one of them has none.
           array_agg(least(greatest(last_validated, 0), 281474976710655))
               FILTER (WHERE last_validated IS NOT NULL) AS times,
           bool_or(last_validated IS NULL) AS untimed

      FROM access_tokens
     WHERE puppets_user_id IS NULL AND device_id IS NOT NULL
     GROUP BY user_id, device_id
)
SELECT *
  FROM (SELECT (CASE WHEN starts_with(q.user_id, '@') AND length(q.user_id) > length(p.sfx) + 1 AND right(q.user_id, length(p.sfx)) = p.sfx THEN substr(q.user_id, 2, length(q.user_id) - 1 - length(p.sfx)) ELSE q.user_id END)                                          AS username,
               q.device_id,
               q.display_name                                                AS human_name,
               (CASE WHEN t.session_ms IS NOT NULL
                     THEN least(greatest(t.session_ms, 0), 281474976710655) END)::int8
                                                                             AS created_at,
               t.times::int8[]                                               AS created_at_alternatives,
               coalesce(t.untimed, false)                                    AS created_at_untimed,
               q.admin                                                       AS is_synapse_admin,
               q.last_seen::int8                                             AS last_active_at,
               q.ip                                                          AS last_active_ip,
               q.user_agent,
               NULL::int8                                                    AS finished_at,
               q.skip
          FROM (
-- Every device. Hidden rows are cross-signing keys, not devices; `guest_device` is what
-- Synapse registers for guests. Both are skipped before the owner is looked at.
WITH
-- When each device's compat session was created: the earliest `last_validated` of its
-- non-refreshable tokens, else of its refreshable ones (puppet tokens never count). A device
-- whose tokens never recorded a time gets the migration time, chosen by syn2mas (NULL here).
sess AS (
    SELECT user_id, device_id,
           coalesce(min(last_validated) FILTER (WHERE refresh_token_id IS NULL),
                    min(last_validated)) AS session_ms
      FROM access_tokens
     WHERE puppets_user_id IS NULL AND device_id IS NOT NULL
     GROUP BY user_id, device_id
)
SELECT d.user_id,
       d.device_id,
       d.display_name,
       d.last_seen,
       d.ip,
       d.user_agent,
       u.admin <> 0 AS admin,
       u.creation_ts AS user_creation_ts,
       s.session_ms,
       CASE WHEN d.hidden IS NOT FALSE              THEN 'hidden'
            WHEN d.device_id = 'guest_device'       THEN 'guest_device'
            WHEN u.name IS NULL                     THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL        THEN 'appservice'
            WHEN u.deactivated <> 0                 THEN 'deactivated'
            WHEN u.is_guest <> 0                    THEN 'guest'
       END AS skip
  FROM devices d
  LEFT JOIN users u ON u.name = d.user_id
  LEFT JOIN sess s  ON s.user_id = d.user_id AND s.device_id = d.device_id
               ) q
          LEFT JOIN sess t ON t.user_id = q.user_id AND t.device_id = q.device_id
       CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.device_id COLLATE "C" NULLS FIRST,
          v.skip IS NOT NULL
