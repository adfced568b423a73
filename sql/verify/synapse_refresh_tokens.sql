-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `compat_refresh_tokens` must hold: every pair of the refresh_tokens rules below, in the
-- session of its (user, device), pointing at its access token, created with it, not consumed.
SELECT *
  FROM (SELECT q.rt_token              AS refresh_token,
               (CASE WHEN starts_with(q.user_id, '@') AND length(q.user_id) > length(p.sfx) + 1 AND right(q.user_id, length(p.sfx)) = p.sfx THEN substr(q.user_id, 2, length(q.user_id) - 1 - length(p.sfx)) ELSE q.user_id END)    AS username,
               q.device_id,
               q.at_token              AS access_token,
               q.last_validated::int8  AS created_at,
               NULL::int8              AS consumed_at,
               true                    AS created_with_access_token,
               true                    AS in_access_token_session,
               q.skip
          FROM (
-- Every refresh token with the access token it produced. A pair is dropped when it was
-- refreshed and its successor's access token has been used (the client moved on); if the
-- successor was never used, both the old and the new pair stay valid, as in Synapse.
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
SELECT r.id AS rt_id,
       r.user_id,
       r.device_id,
       r.token AS rt_token,
       a.id AS at_id,
       a.token AS at_token,
       a.valid_until_ms,
       a.last_validated,
       u.creation_ts AS user_creation_ts,
       s.session_ms,
       CASE WHEN a.id IS NULL                                      THEN 'no_access_token'
            WHEN a.user_id <> r.user_id
              OR a.device_id IS DISTINCT FROM r.device_id          THEN 'inconsistent_pair'
            WHEN d.device_id IS NULL                               THEN 'device_deleted'
            WHEN EXISTS (SELECT 1 FROM access_tokens nx
                          WHERE nx.refresh_token_id = r.next_token_id AND nx.used)
                                                                   THEN 'superseded'
            WHEN u.name IS NULL                                    THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL                       THEN 'appservice'
            WHEN u.deactivated <> 0                                THEN 'deactivated'
            WHEN u.is_guest <> 0                                   THEN 'guest'
            WHEN d.hidden IS NOT FALSE OR d.device_id = 'guest_device'
                                                                   THEN 'device_hidden'
       END AS skip
  FROM refresh_tokens r
  LEFT JOIN access_tokens a ON a.refresh_token_id = r.id
  LEFT JOIN users u   ON u.name = r.user_id
  LEFT JOIN devices d ON d.user_id = r.user_id AND d.device_id = r.device_id
  LEFT JOIN sess s    ON s.user_id = r.user_id AND s.device_id = r.device_id
               ) q
       CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p
       ) v
 ORDER BY v.refresh_token COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
