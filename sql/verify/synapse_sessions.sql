-- What MAS `compat_sessions` must hold for devices: one session per migrated device. Its
-- creation time is `session_ms` of sql/session_times.sql (NULL: the migration's time), and
-- for upstream's tool the `last_validated` of any of the device's tokens (it takes the first
-- token it meets), or anything when one of them has none (then it used its migration time).
-- `sess` is computed here once, with the extra columns of session_alternatives.sql; the copy
-- inside sql/devices.sql is not selected from, so the planner drops it.
WITH
#session_times_with_alternatives
SELECT *
  FROM (SELECT LOCALPART(q.user_id)                                          AS username,
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
#source devices
               ) q
          LEFT JOIN sess t ON t.user_id = q.user_id AND t.device_id = q.device_id
       #params
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.device_id COLLATE "C" NULLS FIRST,
          v.skip IS NOT NULL
