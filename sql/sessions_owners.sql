-- Devices and tokens, read 1 of 3: every user as an owner, for syn2mas's own join (see
-- src/transform/sessions.rs). `owner_skip` follows devices.sql, access_tokens.sql and
-- refresh_tokens.sql: appservice, then deactivated, then guest. A NULL name owns nothing.
SELECT u.name,
       CASE WHEN u.appservice_id IS NOT NULL THEN 'appservice'
            WHEN u.deactivated <> 0          THEN 'deactivated'
            WHEN u.is_guest <> 0             THEN 'guest'
       END                                   AS owner_skip,
       u.creation_ts,
       u.admin <> 0                          AS admin
  FROM users u
 WHERE u.name IS NOT NULL
