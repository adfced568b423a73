-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `compat_sessions` must hold for tokens without a device: one session per token,
-- keyed by that token, never admin, created when the token was (NULL: the migration's time).
SELECT *
  FROM (SELECT q.token                  AS access_token,
               (CASE WHEN starts_with(q.user_id, '@') AND length(q.user_id) > length(p.sfx) + 1 AND right(q.user_id, length(p.sfx)) = p.sfx THEN substr(q.user_id, 2, length(q.user_id) - 1 - length(p.sfx)) ELSE q.user_id END)     AS username,
               q.last_validated::int8   AS created_at,
               false                    AS is_synapse_admin,
               NULL::text               AS human_name,
               NULL::int8               AS last_active_at,
               NULL::text               AS last_active_ip,
               NULL::text               AS user_agent,
               NULL::int8               AS finished_at,
               true                     AS created_with_token,
               1::int8                  AS tokens,
               q.skip
          FROM (
-- Access tokens that do not belong to a refresh token (those come with refresh_tokens.sql).
-- The reasons that upstream applies in SQL (puppets, vanished devices) come first, so a
-- puppet token of a deleted user is a skip, not an orphan.
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
               ) q
       CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p
         WHERE q.device_id IS NULL
       ) v
 ORDER BY v.access_token COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
