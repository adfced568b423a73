SELECT t.access_token, u.username, s.created_at, s.is_synapse_admin, s.human_name,
       s.last_active_at, s.last_active_ip, s.user_agent, s.finished_at,
       s.created_at = t.created_at,
       count(t.compat_access_token_id) OVER (PARTITION BY s.compat_session_id),
       s.compat_session_id
  FROM compat_sessions s
  LEFT JOIN users u ON u.user_id = s.user_id
  LEFT JOIN compat_access_tokens t ON t.compat_session_id = s.compat_session_id
 WHERE s.device_id IS NULL
 ORDER BY t.access_token COLLATE "C" NULLS FIRST
