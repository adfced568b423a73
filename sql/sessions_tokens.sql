-- Devices and tokens, read 3 of 3: every access token with the refresh token it belongs to.
-- The pair's own reasons (inconsistent_pair, superseded) are decided here, as in
-- refresh_tokens.sql; the joins with devices and owners are syn2mas's (src/transform/sessions.rs).
-- Only these two small joins run on Synapse: hashing `refresh_tokens` and the used refreshed
-- tokens costs a fraction of a second at 1M users.
SELECT a.user_id,
       a.device_id,
       a.id,
       a.token,
       a.valid_until_ms,
       a.last_validated,
       a.puppets_user_id IS NOT NULL            AS puppet,
       a.refresh_token_id IS NULL               AS plain,
       r.id                                     AS rt_id,
       r.token                                  AS rt_token,
       CASE WHEN r.id IS NULL                   THEN NULL
            WHEN r.user_id <> a.user_id
              OR r.device_id IS DISTINCT FROM a.device_id THEN 'inconsistent_pair'
            WHEN EXISTS (SELECT 1 FROM access_tokens nx
                          WHERE nx.refresh_token_id = r.next_token_id AND nx.used
                            AND nx.refresh_token_id IS NOT NULL)
                                                THEN 'superseded'
       END                                      AS pair_skip
  FROM access_tokens a
  LEFT JOIN refresh_tokens r ON r.id = a.refresh_token_id
