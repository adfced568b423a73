-- What MAS `upstream_oauth_links` must hold: every external id, keyed by the MAS provider its
-- auth_provider maps to (`synapse_idp_id`, passed in `syn2mas.verify_provider_ids`) and the
-- subject; created with the user (clamped to what a ULID's 48 bits hold, as the id is).
SELECT *
  FROM (SELECT (p.provider_ids ->> q.auth_provider)::uuid AS provider,
               q.external_id                             AS subject,
               LOCALPART(q.user_id)                      AS username,
               (CASE WHEN q.user_creation_ts IS NOT NULL
                     THEN least(greatest(q.user_creation_ts * 1000, 0), 281474976710655)
                END)::int8                               AS created_at,
               q.skip
          FROM (
#source external_ids
               ) q
       #params
       ) v
 ORDER BY v.provider NULLS FIRST, v.subject COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
