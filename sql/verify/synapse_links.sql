-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `upstream_oauth_links` must hold: every external id, keyed by the MAS provider its
-- auth_provider maps to (`synapse_idp_id`, passed in `syn2mas.verify_provider_ids`) and the
-- subject; created with the user (clamped to what a ULID's 48 bits hold, as the id is).
SELECT *
  FROM (SELECT (p.provider_ids ->> q.auth_provider)::uuid AS provider,
               q.external_id                             AS subject,
               (CASE WHEN starts_with(q.user_id, '@') AND length(q.user_id) > length(p.sfx) + 1 AND right(q.user_id, length(p.sfx)) = p.sfx THEN substr(q.user_id, 2, length(q.user_id) - 1 - length(p.sfx)) ELSE q.user_id END)                      AS username,
               (CASE WHEN q.user_creation_ts IS NOT NULL
                     THEN least(greatest(q.user_creation_ts * 1000, 0), 281474976710655)
                END)::int8                               AS created_at,
               q.skip
          FROM (
-- Every external id. `syn2mas.providers` is a JSON object whose keys are the auth_provider
-- values that have a MAS provider (set with set_config by syn2mas, never spliced in).
SELECT e.user_id,
       e.auth_provider,
       e.external_id,
       u.creation_ts AS user_creation_ts,
       CASE WHEN u.name IS NULL                THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL   THEN 'appservice'
            WHEN NOT (current_setting('syn2mas.providers')::jsonb ? e.auth_provider)
                                               THEN 'unmapped_provider'
       END AS skip
  FROM user_external_ids e
  LEFT JOIN users u ON u.name = e.user_id
               ) q
       CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p
       ) v
 ORDER BY v.provider NULLS FIRST, v.subject COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
