SELECT t.access_token, u.username, s.device_id, t.created_at, t.expires_at,
       t.compat_access_token_id
  FROM compat_access_tokens t
  LEFT JOIN compat_sessions s ON s.compat_session_id = t.compat_session_id
  LEFT JOIN users u ON u.user_id = s.user_id
 ORDER BY t.access_token COLLATE "C" NULLS FIRST
