-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `user_passwords` must hold: the hash of every user that has one, verbatim, as
-- version 1, created with the user.
SELECT *
  FROM (SELECT (CASE WHEN starts_with(q.name, '@') AND length(q.name) > length(p.sfx) + 1 AND right(q.name, length(p.sfx)) = p.sfx THEN substr(q.name, 2, length(q.name) - 1 - length(p.sfx)) ELSE q.name END)            AS username,
               q.password_hash              AS hashed_password,
               (q.creation_ts * 1000)::int8 AS created_at,
               1::int8                      AS version,
               q.skip
          FROM (
-- Every Synapse user. `skip` names why a row is not migrated (NULL: migrated).
SELECT u.name,
       u.password_hash,
       u.creation_ts,
       u.admin <> 0       AS admin,
       u.deactivated <> 0 AS deactivated,
       u.locked,
       u.is_guest <> 0    AS is_guest,
       CASE WHEN u.appservice_id IS NOT NULL THEN 'appservice' END AS skip
  FROM users u
               ) q
       CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p
         WHERE q.password_hash IS NOT NULL
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
