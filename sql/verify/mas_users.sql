SELECT u.username, u.created_at, u.locked_at, u.deactivated_at, u.can_request_admin, u.is_guest,
       u.user_id
  FROM users u
 ORDER BY u.username COLLATE "C" NULLS FIRST
