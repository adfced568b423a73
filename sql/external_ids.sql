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
