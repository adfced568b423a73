-- Access tokens that do not belong to a refresh token (those come with refresh_tokens.sql).
-- The reasons that upstream applies in SQL (puppets, vanished devices) come first, so a
-- puppet token of a deleted user is a skip, not an orphan.
WITH
#include session_times.sql
SELECT a.id,
       a.user_id,
       a.device_id,
       a.token,
       a.valid_until_ms,
       a.last_validated,
       u.creation_ts AS user_creation_ts,
       s.session_ms,
       CASE WHEN a.puppets_user_id IS NOT NULL                     THEN 'puppet'
            WHEN a.device_id IS NOT NULL AND d.device_id IS NULL   THEN 'device_deleted'
            WHEN u.name IS NULL                                    THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL                       THEN 'appservice'
            WHEN u.deactivated <> 0                                THEN 'deactivated'
            WHEN u.is_guest <> 0                                   THEN 'guest'
            WHEN a.device_id IS NOT NULL
             AND (d.hidden IS NOT FALSE OR d.device_id = 'guest_device')
                                                                   THEN 'device_hidden'
       END AS skip
  FROM access_tokens a
  LEFT JOIN users u   ON u.name = a.user_id
  LEFT JOIN devices d ON d.user_id = a.user_id AND d.device_id = a.device_id
  LEFT JOIN sess s    ON s.user_id = a.user_id AND s.device_id = a.device_id
 WHERE a.refresh_token_id IS NULL
