-- Devices and access tokens (with their refresh tokens) in one pass. This replaces three reads
-- (devices, tokens, refresh pairs) that each joined users, devices and an aggregate of all
-- tokens: here each of those is built once.
--
-- One row per token (with its device's columns when the device exists), plus one row per
-- device without tokens. `carries_device` marks the single row that stands for its device
-- (its lowest token, or its only row), so the client writes each session once without a map.
-- `session_ms` is when the device's compat session was created: the earliest `last_validated`
-- of its non-refreshable tokens, else of its refreshable ones (puppet tokens never count);
-- NULL means the migration time, chosen by syn2mas.
--
-- Skip reasons are decided by the client in the same order as devices.sql, access_tokens.sql
-- and refresh_tokens.sql, which `check` aggregates for its plan.
--
-- Partitioned by user: a session with `syn2mas.parts` = n and `syn2mas.part` = k reads only
-- the users whose hashtext(user_id) is k modulo n (every row of a device, its tokens and its
-- owner share the user id, so each partition is self-contained); unset means everything.
-- Refresh tokens are not filtered: a pair whose two halves name different users must still
-- meet (inconsistent_pair), and there are few of them.
WITH part AS (
    SELECT coalesce(nullif(current_setting('syn2mas.parts', true), ''), '1')::int AS n,
           coalesce(nullif(current_setting('syn2mas.part', true), ''), '0')::int AS k
),
d AS (
    SELECT devices.* FROM devices, part
     WHERE part.n = 1 OR (hashtext(user_id) & 2147483647) % part.n = part.k
),
a AS NOT MATERIALIZED (
    SELECT access_tokens.* FROM access_tokens, part
     WHERE part.n = 1 OR (hashtext(user_id) & 2147483647) % part.n = part.k
),
u AS (
    SELECT users.* FROM users, part
     WHERE part.n = 1 OR (hashtext(name) & 2147483647) % part.n = part.k
),
sess AS (
    SELECT user_id, device_id,
           coalesce(min(last_validated) FILTER (WHERE refresh_token_id IS NULL AND puppets_user_id IS NULL),
                    min(last_validated) FILTER (WHERE puppets_user_id IS NULL)) AS session_ms,
           min(id) AS first_token
      FROM a
     WHERE device_id IS NOT NULL
     GROUP BY user_id, device_id
)
SELECT coalesce(d.user_id, a.user_id)                             AS user_id,         -- 0
       coalesce(d.device_id, a.device_id)                         AS device_id,       -- 1
       d.user_id IS NOT NULL                                      AS device_exists,   -- 2
       d.user_id IS NOT NULL AND (a.id IS NULL OR a.id = s.first_token)
                                                                  AS carries_device,  -- 3
       d.display_name,                                                                -- 4
       d.last_seen,                                                                   -- 5
       d.ip,                                                                          -- 6
       d.user_agent,                                                                  -- 7
       CASE WHEN d.user_id IS NULL                THEN NULL
            WHEN d.hidden IS NOT FALSE            THEN 'hidden'
            WHEN d.device_id = 'guest_device'     THEN 'guest_device'
       END                                                        AS device_skip,     -- 8
       CASE WHEN u.name IS NULL                   THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL      THEN 'appservice'
            WHEN u.deactivated <> 0               THEN 'deactivated'
            WHEN u.is_guest <> 0                  THEN 'guest'
       END                                                        AS owner_skip,      -- 9
       u.creation_ts,                                                                 -- 10
       u.admin <> 0                                               AS admin,           -- 11
       s.session_ms,                                                                  -- 12
       a.id                                                       AS at_id,           -- 13
       a.token                                                    AS at_token,        -- 14
       a.valid_until_ms,                                                              -- 15
       a.last_validated,                                                              -- 16
       a.puppets_user_id IS NOT NULL                              AS puppet,          -- 17
       r.id                                                       AS rt_id,           -- 18
       r.token                                                    AS rt_token,        -- 19
       CASE WHEN r.id IS NULL                     THEN NULL
            WHEN r.user_id <> a.user_id
              OR r.device_id IS DISTINCT FROM a.device_id THEN 'inconsistent_pair'
            WHEN EXISTS (SELECT 1 FROM access_tokens nx
                          WHERE nx.refresh_token_id = r.next_token_id AND nx.used)
                                                  THEN 'superseded'
       END                                                        AS pair_skip        -- 20
  FROM d
  FULL JOIN a ON a.user_id = d.user_id AND a.device_id = d.device_id
  LEFT JOIN sess s ON s.user_id = coalesce(d.user_id, a.user_id)
                  AND s.device_id = coalesce(d.device_id, a.device_id)
  LEFT JOIN refresh_tokens r ON r.id = a.refresh_token_id
  LEFT JOIN u ON u.name = coalesce(d.user_id, a.user_id)
