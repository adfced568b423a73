-- What MAS `compat_access_tokens` must hold: the tokens of sql/access_tokens.sql and the access
-- halves of sql/refresh_tokens.sql, each in the session of its (user, device), or of its user
-- alone when it has no device; created at `last_validated` (NULL: the migration's time).
SELECT *
  FROM (SELECT q.token                AS access_token,
               LOCALPART(q.user_id)   AS username,
               q.device_id,
               q.last_validated::int8 AS created_at,
               q.valid_until_ms::int8 AS expires_at,
               q.skip
          FROM (
#source access_tokens
               ) q
       #params
        UNION ALL
        SELECT q.at_token,
               LOCALPART(q.user_id),
               q.device_id,
               q.last_validated::int8,
               q.valid_until_ms::int8,
               q.skip
          FROM (
#source refresh_tokens
               ) q
       #params
         WHERE q.at_id IS NOT NULL
       ) v
 ORDER BY v.access_token COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
