-- What MAS `compat_refresh_tokens` must hold: every pair of sql/refresh_tokens.sql, in the
-- session of its (user, device), pointing at its access token, created with it, not consumed.
SELECT *
  FROM (SELECT q.rt_token              AS refresh_token,
               LOCALPART(q.user_id)    AS username,
               q.device_id,
               q.at_token              AS access_token,
               q.last_validated::int8  AS created_at,
               NULL::int8              AS consumed_at,
               true                    AS created_with_access_token,
               true                    AS in_access_token_session,
               q.skip
          FROM (
#source refresh_tokens
               ) q
       #params
       ) v
 ORDER BY v.refresh_token COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
