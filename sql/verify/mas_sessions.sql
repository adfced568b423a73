SELECT u.username, s.device_id, s.human_name, s.created_at, s.is_synapse_admin, s.last_active_at,
       s.last_active_ip, s.user_agent, s.finished_at, s.compat_session_id
  FROM compat_sessions s
  LEFT JOIN users u ON u.user_id = s.user_id
 WHERE s.device_id IS NOT NULL
 ORDER BY u.username COLLATE "C" NULLS FIRST, s.device_id COLLATE "C" NULLS FIRST
