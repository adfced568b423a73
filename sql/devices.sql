-- Every device. Hidden rows are cross-signing keys, not devices; `guest_device` is what
-- Synapse registers for guests. Both are skipped before the owner is looked at.
WITH
#include session_times.sql
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
