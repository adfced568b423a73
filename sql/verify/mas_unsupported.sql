SELECT u.username, t.medium, t.address, t.created_at
  FROM user_unsupported_third_party_ids t
  LEFT JOIN users u ON u.user_id = t.user_id
 ORDER BY u.username COLLATE "C" NULLS FIRST, t.medium COLLATE "C" NULLS FIRST,
          t.address COLLATE "C" NULLS FIRST
