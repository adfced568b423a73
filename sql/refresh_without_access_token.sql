-- Refresh tokens no access token points at: read (and skipped as `no_access_token`) without
-- being streamed, since nothing of them is migrated.
SELECT count(*)::int8
  FROM refresh_tokens r
 WHERE NOT EXISTS (SELECT 1 FROM access_tokens a WHERE a.refresh_token_id = r.id)
