-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `users` must hold: every row of the users rules below, keyed by localpart. A row with a
-- `skip` reason must be absent from MAS. Times are Unix ms; locked_at and deactivated_at are
-- the creation time because Synapse does not record when either happened.
SELECT *
  FROM (SELECT (CASE WHEN starts_with(q.name, '@') AND length(q.name) > length(p.sfx) + 1 AND right(q.name, length(p.sfx)) = p.sfx THEN substr(q.name, 2, length(q.name) - 1 - length(p.sfx)) ELSE q.name END)                                        AS username,
               (q.creation_ts * 1000)::int8                             AS created_at,
               (CASE WHEN q.locked THEN q.creation_ts * 1000 END)::int8 AS locked_at,
               (CASE WHEN q.deactivated THEN q.creation_ts * 1000 END)::int8 AS deactivated_at,
               q.admin                                                  AS can_request_admin,
               q.is_guest,
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
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
