-- verify's own statement of what the migration makes of Synapse's rows, kept apart from the
-- Rust transform (src/transform/rules.rs) on purpose: it is the oracle that catches a mistake
-- there. Settings: syn2mas.verify_suffix (`:<server>`), syn2mas.verify_provider_ids and
-- syn2mas.providers (auth_provider → MAS provider id), set by verify as bind parameters.
-- What MAS `user_emails` must hold: every `email` third-party id, address verbatim.
SELECT *
  FROM (SELECT (CASE WHEN starts_with(q.user_id, '@') AND length(q.user_id) > length(p.sfx) + 1 AND right(q.user_id, length(p.sfx)) = p.sfx THEN substr(q.user_id, 2, length(q.user_id) - 1 - length(p.sfx)) ELSE q.user_id END) AS username,
               q.address            AS email,
               q.added_at::int8     AS created_at,
               q.skip
          FROM (
-- Every third-party id, with what the transform needs of its owner.
SELECT t.user_id,
       t.medium,
       t.address,
       t.added_at,
       u.creation_ts AS user_creation_ts,
       CASE WHEN u.name IS NULL                THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL   THEN 'appservice'
       END AS skip
  FROM user_threepids t
  LEFT JOIN users u ON u.name = t.user_id
               ) q
       CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p
         WHERE q.medium = 'email'
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.email COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
