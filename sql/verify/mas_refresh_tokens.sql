SELECT r.refresh_token, u.username, s.device_id, a.access_token, r.created_at, r.consumed_at,
       r.created_at = a.created_at, r.compat_session_id = a.compat_session_id,
       r.compat_refresh_token_id
  FROM compat_refresh_tokens r
  LEFT JOIN compat_sessions s ON s.compat_session_id = r.compat_session_id
  LEFT JOIN users u ON u.user_id = s.user_id
  LEFT JOIN compat_access_tokens a ON a.compat_access_token_id = r.compat_access_token_id
 ORDER BY r.refresh_token COLLATE "C" NULLS FIRST
