SELECT u.username, p.hashed_password, p.created_at, p.version::int8, p.user_password_id
  FROM user_passwords p
  LEFT JOIN users u ON u.user_id = p.user_id
 ORDER BY u.username COLLATE "C" NULLS FIRST, p.created_at, p.user_password_id
