SELECT u.username, e.email, e.created_at, e.user_email_id
  FROM user_emails e
  LEFT JOIN users u ON u.user_id = e.user_id
 ORDER BY u.username COLLATE "C" NULLS FIRST, e.email COLLATE "C" NULLS FIRST
