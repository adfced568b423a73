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
