-- What MAS `compat_sessions` must hold for tokens without a device: one session per token,
-- keyed by that token, never admin, created when the token was (NULL: the migration's time).
SELECT *
  FROM (SELECT q.token                  AS access_token,
               LOCALPART(q.user_id)     AS username,
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
#source access_tokens
               ) q
       #params
         WHERE q.device_id IS NULL
       ) v
 ORDER BY v.access_token COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
